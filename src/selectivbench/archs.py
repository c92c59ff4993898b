"""`selectivbench archs`: the registered architectures, their parameter counts and state sizes."""

from __future__ import annotations

import argparse

from selectivbench.models import RecNet, available, get_mixer, load_plugins


def describe(arch: str, feat_size: int, vocab: int, num_classes: int, d_state: int | None) -> dict:
    import torch

    with torch.device("meta"):  # shapes only: instant even at feat 1296
        try:
            model = RecNet(arch, feat_size, vocab, num_classes, d_state=d_state)
        except ValueError as err:  # a size the architecture skips (transformer @ 960)
            return {"arch": arch, "feat_size": feat_size, "width": None, "params_M": None, "state_per_layer": None, "note": str(err)}
    return {
        "arch": arch,
        "feat_size": feat_size,
        "width": model.width,
        "heads": model.n_head,
        "params_M": round(model.num_parameters() / 1e6, 3),
        "state_per_layer": model.state_size_per_layer(),
        "note": get_mixer(arch).summary,
    }


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selectivbench archs", description=__doc__)
    p.add_argument("--feat", type=int, nargs="+", default=[256], help="nominal feat sizes (default: 256)")
    p.add_argument("--vocab", type=int, default=41, help="input symbols V (default: 41)")
    p.add_argument("--classes", type=int, default=1601, help="output classes C (default: 1601)")
    p.add_argument("--d-state", type=int, default=None, help="state size N for Mamba-style mixers (default: per arch)")
    p.add_argument("--plugins", nargs="*", default=[], help="extra modules/paths that register architectures")
    args = p.parse_args(argv)
    load_plugins(args.plugins)
    print(f"{'arch':<22}{'feat':>6}{'width':>7}{'params (M)':>12}{'state/layer':>13}  summary")
    for arch in available():
        for feat in args.feat:
            row = describe(arch, feat, args.vocab, args.classes, args.d_state)
            params = "-" if row["params_M"] is None else f"{row['params_M']:.3f}"
            state = "-" if row["state_per_layer"] is None else str(row["state_per_layer"])
            print(f"{arch:<22}{feat:>6}{str(row['width']):>7}{params:>12}{state:>13}  {row['note']}")
    return 0

"""Cross-check our mixers against the fla 0.6.0 layers the authors used, with identical weights.

For each architecture: build fla's layer with the paper's arguments, copy its weights into our
mixer, and compare outputs and gradients (input and every parameter) in bf16 at d 256, T 400.
Both bf16 runs are judged against our fp32 chunked path (TF32 off) as the reference, and against
each other. Each architecture runs in its own subprocess with a time limit, because some fla
layers hang or refuse to run on some Triton versions (notes/fla-on-h100.md).

    python bench/crosscheck_fla.py [--archs gla delta_net ...] [--out bench/results/crosscheck_fla.md]

Needs CUDA and `fla` importable (e.g. wheels installed with --target and PYTHONPATH).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ARCHS = ["gla", "delta_net", "gated_delta_net", "gated_delta_product", "mamba2", "mamba"]


def build_fla_layer(arch: str, d: int, n_head: int, d_state: int):
    """The fla layer and arguments of SELECTIVBENCH.md §10.2 (Mamba/Mamba2: fla's ports of mamba_ssm)."""
    import fla.layers as L

    hd = d // n_head
    if arch == "gla":
        return L.GatedLinearAttention(hidden_size=d, num_heads=n_head, use_short_conv=True, expand_k=1, expand_v=2, conv_size=4)
    if arch == "delta_net":
        return L.DeltaNet(hidden_size=d, num_heads=n_head, use_short_conv=True, expand_k=1, expand_v=2, conv_size=4)
    if arch == "gated_delta_net":
        return L.GatedDeltaNet(hidden_size=d, head_dim=hd, num_heads=n_head, use_short_conv=True, expand_v=2, conv_size=4)
    if arch == "gated_delta_product":
        return L.GatedDeltaProduct(hidden_size=d, head_dim=hd, num_heads=n_head, use_short_conv=True,
                                   num_householder=4, expand_v=2, conv_size=4)
    if arch == "mamba2":
        return L.Mamba2(num_heads=2 * n_head, head_dim=hd, hidden_size=d, state_size=d_state, expand=2)
    if arch == "mamba":
        return L.Mamba(hidden_size=d, state_size=d_state, intermediate_size=2 * d)
    raise KeyError(arch)


def fla_name(ours: str) -> str:
    """Our parameter name -> fla's: our ShortConv wraps its Conv1d as `.conv`, fla's is the Conv1d."""
    return ours.replace("conv1d.conv.", "conv1d.")


def stage(name: str) -> None:
    print(f"STAGE {name}", flush=True)


def rel_rms(x, ref) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


def check_one(arch: str, d: int, T: int, B: int, seed: int) -> dict:
    import torch

    from selectivbench.models import get_mixer, get_num_heads

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    n_head = get_num_heads(d)
    mixer_cls = get_mixer(arch)
    d_state = mixer_cls.default_d_state
    torch.manual_seed(seed)
    stage("build fla layer")
    fla_layer = build_fla_layer(arch, d, n_head, d_state).to(dev)
    # round the shared weights to bf16 once so both sides start from the same numbers
    with torch.no_grad():
        for p in fla_layer.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ours = mixer_cls(d_model=d, n_head=n_head, d_state=d_state, chunk_size=mixer_cls.default_chunk_size).to(dev)
    fla_sd = fla_layer.state_dict()
    mapped, missing = {}, []
    for name, p in ours.state_dict().items():
        src = fla_sd.get(fla_name(name))
        if src is None or src.shape != p.shape:
            missing.append(f"{name}{tuple(p.shape)} <- {fla_name(name)}{None if src is None else tuple(src.shape)}")
        else:
            mapped[name] = src
    if missing:
        return {"arch": arch, "error": "weights do not map: " + "; ".join(missing)}
    ours.load_state_dict(mapped)

    x0 = torch.randn(B, T, d, device=dev)
    g0 = torch.randn(B, T, d, device=dev)

    def run(module, dtype, autocast):
        x = x0.clone().to(dtype).requires_grad_(True)
        module.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = module(x)
            y = y[0] if isinstance(y, tuple) else y
        (y.float() * g0).sum().backward()
        torch.cuda.synchronize()
        grads = {n: p.grad.float().clone() for n, p in module.named_parameters() if p.grad is not None}
        return y.float().detach(), x.grad.float(), grads, time.perf_counter() - t0

    stage("ours fp32")
    ref_y, ref_dx, ref_g, _ = run(ours, torch.float32, autocast=False)
    stage("ours bf16")
    our_y, our_dx, our_g, _ = run(ours, torch.float32, autocast=True)
    row = {"arch": arch, "d": d, "T": T, "B": B, "heads": n_head}
    row["ours_out"] = rel_rms(our_y, ref_y)
    row["ours_dx"] = rel_rms(our_dx, ref_dx)
    ours_worst = max(ref_g, key=lambda n: rel_rms(our_g[n], ref_g[n]))
    row["ours_dparam_max"] = rel_rms(our_g[ours_worst], ref_g[ours_worst])
    row["ours_worst_param"] = ours_worst
    stage("fla bf16 forward+backward")
    try:
        fla_bf16 = fla_layer.to(torch.bfloat16)
        fla_y, fla_dx, fla_g, _ = run(fla_bf16, torch.bfloat16, autocast=False)
    except Exception as err:  # fla refuses some layers on some Triton versions; record why
        row["fla_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        try:  # the forward alone may still run
            with torch.no_grad():
                y = fla_layer(x0.to(torch.bfloat16))
                fla_y = (y[0] if isinstance(y, tuple) else y).float()
            row["fla_out"] = rel_rms(fla_y, ref_y)
            row["ours_vs_fla_out"] = rel_rms(our_y, fla_y)
        except Exception as err2:
            row["fla_error"] += f" | forward: {type(err2).__name__}: {str(err2).splitlines()[0][:200]}"
        return row
    fla_g = {n: fla_g[fla_name(n)] for n in ref_g if fla_name(n) in fla_g}
    row["fla_out"] = rel_rms(fla_y, ref_y)
    row["fla_dx"] = rel_rms(fla_dx, ref_dx)
    row["fla_dparam_max"] = max(rel_rms(fla_g[n], ref_g[n]) for n in fla_g)
    row["ours_vs_fla_out"] = rel_rms(our_y, fla_y)
    row["ours_vs_fla_dx"] = rel_rms(our_dx, fla_dx)
    worst = max(fla_g, key=lambda n: rel_rms(our_g[n], fla_g[n]))
    row["ours_vs_fla_dparam_max"] = rel_rms(our_g[worst], fla_g[worst])
    row["worst_param"] = worst
    return row


COLUMNS = ["arch", "seconds", "ours_out", "fla_out", "ours_vs_fla_out", "ours_dx", "fla_dx", "ours_vs_fla_dx",
           "ours_dparam_max", "ours_worst_param", "fla_dparam_max", "ours_vs_fla_dparam_max", "worst_param"]


def to_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " | note |", "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        cells = [f"{r[c]:.0f}" if c == "seconds" and c in r else f"{r[c]:.2e}" if isinstance(r.get(c), float)
                 else str(r.get(c, "–")) for c in COLUMNS]
        note = r.get("error") or r.get("fla_error") or ""
        lines.append("| " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--T", type=int, default=400)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=180, help="seconds per architecture (fla compiles on first use)")
    p.add_argument("--out", default="bench/results/crosscheck_fla.md")
    p.add_argument("--jobs", type=int, default=len(ARCHS), help="architectures checked at once (one process each)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(check_one(args.one, args.d, args.T, args.batch, args.seed)), flush=True)
        return 0
    def run_one(arch: str) -> dict:
        cmd = [sys.executable, __file__, "--one", arch, "--d", str(args.d), "--T", str(args.T),
               "--batch", str(args.batch), "--seed", str(args.seed)]
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            row = json.loads(lines[-1][7:]) if lines else {"arch": arch, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        except subprocess.TimeoutExpired as err:
            # name the stage it was stuck in (the child prints STAGE lines as it goes)
            so = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            stages = [ln[6:] for ln in so.splitlines() if ln.startswith("STAGE ")]
            row = {"arch": arch, "error": f"no result within {args.timeout} s (last stage: {stages[-1] if stages else 'start'})"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        return row

    # fla's first use is dominated by Triton compile + autotune on the CPU: run the layers side by side
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_one, args.archs))
    import torch

    import fla

    header = (f"# Cross-check against fla {fla.__version__} (bf16, d {args.d}, T {args.T}, B {args.batch})\n\n"
              f"{datetime.date.today()} on {torch.cuda.get_device_name()}, torch {torch.__version__}. "
              f"Command: `python bench/crosscheck_fla.py`; `seconds` is each layer's wall time in its own process, fla's Triton compile included.\n\n"
              "Relative RMS errors. `ours_*`/`fla_*`: the bf16 run against our fp32 chunked path (TF32 off) with "
              "the same (bf16-rounded) weights; `ours_vs_fla_*`: the two bf16 runs against each other. "
              "Ours runs fp32 weights under bf16 autocast; fla runs with bf16 weights and input, as the authors ran "
              "the delta family.")
    md = to_markdown(rows, header)
    print(md)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

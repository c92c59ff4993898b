"""Kernel launches of one training step per architecture, counted without a GPU.

    python bench/bench_launches.py                       # d 256, T 400/1300/2200, 8 layers, every arch
    python bench/bench_launches.py --gpu-csv bench/results/gpu_20261125/gpu_eager.csv

Eager PyTorch launches one kernel per tensor op, and on an H100 a small op takes less GPU time
than its launch costs on the host (Python, dispatcher, CUDA launch: several µs). Whether a step
is launch-bound therefore depends on how many ops it runs, which is the same on any device: a
TorchDispatchMode counts the aten ops of the forward and backward (bf16 autocast as on CUDA,
masked CE included) that produce data, i.e. neither views (nor `_unsafe_view`) nor bare allocations
(`empty*`).
Fused Adam and gradient clipping add a handful more on CUDA and are not counted.

Ops depend on the sequence length (chunks walked one by one, blocks of BACKWARD_SLICE elements),
on the number of layers and, through the block count, on the batch; the run uses B = 2 with the
block size scaled as if B were --batch (as bench_memory does), so the count is that of B 64.

With --gpu-csv (rows of bench/bench_gpu.py), each shape also gets µs per op = measured eager
step time / ops: around the host's launch cost (≈ 5-20 µs) the step is launch-bound, and fewer,
larger ops (fusion, torch.compile, a Triton kernel) are what would make it faster; far above, the
GPU work itself dominates. Mamba's selective scan takes another path on CUDA (16-step blocks
fused by torch.compile, models/mamba.py) than the per-step loop counted here on CPU, so its
count is not its CUDA launch count; give it no GPU row. Writes bench/results/launches.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from selectivbench.metrics import masked_cross_entropy
from selectivbench.models import RecNet, available, load_plugins
from selectivbench.models import layers as model_layers

VOCAB, CLASSES = 41, 1601  # amb 40
SLICE = model_layers.BACKWARD_SLICE
METADATA_ONLY = {"_unsafe_view", "_reshape_alias", "lift_fresh", "set_"}  # not flagged as views, launch nothing


class OpCount(TorchDispatchMode):
    """Counts the aten ops that run a kernel: not views, not bare allocations."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and not name.startswith("empty") and name not in METADATA_ONLY:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_step(arch: str, feat: int, T: int, layers: int, target_batch: int, B: int = 2) -> Counter:
    torch.manual_seed(0)
    model = RecNet(arch, feat, VOCAB, CLASSES, n_layers=layers).train()
    x = torch.nn.functional.one_hot(torch.randint(0, VOCAB, (B, T)), VOCAB).float()
    labels, mask = torch.randint(0, CLASSES, (B, T)), torch.ones(B, T)
    model_layers.BACKWARD_SLICE = max(1, SLICE * B // target_batch)
    try:
        with OpCount() as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            masked_cross_entropy(logits, labels, mask).backward()
    finally:
        model_layers.BACKWARD_SLICE = SLICE
    return counter.ops


def measured_ms(paths: list[str]) -> dict:
    """(arch, feat, T) -> eager ms per step from bench_gpu CSV rows."""
    out = {}
    for path in paths:
        with open(path) as f:
            out.update({(r["arch"], int(r["feat"]), int(r["T"])): float(r["ms_step"])
                        for r in csv.DictReader(f) if r.get("variant") == "eager" and r.get("ms_step")})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="*", default=None, help="default: every registered architecture")
    p.add_argument("--feat", type=int, default=256)
    p.add_argument("--lengths", type=int, nargs="+", default=[400, 1300, 2200])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="the batch whose block counts are reproduced")
    p.add_argument("--gpu-csv", nargs="*", default=[], help="bench_gpu CSVs with eager rows: adds µs per op")
    p.add_argument("--plugins", nargs="*", default=[])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "launches.md"))
    args = p.parse_args(argv)
    load_plugins(args.plugins)
    archs = args.archs or available()
    gpu = measured_ms(args.gpu_csv)

    cols = ["arch", "T", "ops/step", "ops/layer", "top ops (share)", "eager GPU ms", "µs/op"]
    rows = []
    for arch in archs:
        for T in args.lengths:
            ops = count_step(arch, args.feat, T, args.layers, args.batch)
            total = sum(ops.values())
            top = ", ".join(f"{n} {c / total:.0%}" for n, c in ops.most_common(3))
            ms = gpu.get((arch, args.feat, T))
            rows.append([arch, T, total, round(total / args.layers), top,
                         "" if ms is None else f"{ms:.0f}", "" if ms is None else f"{ms * 1000 / total:.1f}"])
            print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    cmd = "python bench/bench_launches.py " + " ".join(sys.argv[1:] if argv is None else argv)
    head = (f"# bench_launches {stamp} on {platform.node()} / torch {torch.__version__}\n\ncommand: `{cmd}`\n\n"
            f"Aten ops that run a kernel in one training step's forward + backward (bf16 autocast, masked CE), "
            f"feat {args.feat}, {args.layers} layers, block counts of B {args.batch}; see the script's docstring."
            + (f" Eager GPU times from {', '.join(f'`{c}`' for c in args.gpu_csv)}." if args.gpu_csv else "") + "\n\n")
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    print("\n".join(table))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + "\n".join(table) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

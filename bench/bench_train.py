"""Speed of one full training update (forward, masked CE, backward, clip, Adam) per architecture.

    python bench/bench_train.py                       # tiny CPU config, every registered arch
    python bench/bench_train.py --device cuda         # feat 256, 8 layers, B 64, bf16, Task 1 and 2
    python bench/bench_train.py --device cuda --compile   # the same through `compile: true`

The update is `selectivbench.train.train_update`, the one the training loop runs, on batches of
the real input pipeline (`make_batch`, amb 40: V 41, C 1601, random class sequences). Batches are
assembled beforehand (training overlaps that with compute in a thread); `batch ms` reports the
assembly cost on its own. tokens/s counts valid (unpadded) steps. On CUDA the micro-batch is
probed like `train` does (gradient accumulation if B 64 does not fit). `--compile` runs the
update as `compile: true` training does (train.compiled, batches padded to multiples of
--length-bucket steps); `warm_s` is the untimed warm-up updates, compiles included, and the median
stays robust to a later compile of a new length.

Prints a table and writes bench/results/bench_train_<date>_<host>_<device>.{md,csv}.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selectivbench import runio
from selectivbench.grammar import generate_grammar
from selectivbench.inputs import InputSpec, make_batch
from selectivbench.models import RecNet, available, load_plugins
from selectivbench.train import compiled, probe_micro_batch, train_update

TASKS = {"task1": InputSpec(), "task2": InputSpec(gap_max=1.0, noise=0.2)}


def bench_one(arch, task, grammar, args, device, dtype) -> dict:
    spec = TASKS[task]
    torch.manual_seed(0)
    model = RecNet(arch, args.feat, grammar.vocab, grammar.num_classes, n_layers=args.layers, recompute=args.recompute).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    micro = args.batch
    if device.type == "cuda":
        micro = probe_micro_batch(model, args.batch, spec.max_length("train"), grammar.vocab, device, dtype)
    n_micro = args.batch // micro
    rng = np.random.default_rng(0)
    n_batches = (args.warmup + args.updates) * n_micro
    classes = rng.integers(1, grammar.num_classes, (n_batches * micro, 200)).astype(np.uint16)
    t0 = time.perf_counter()
    batches = [make_batch(classes[i * micro : (i + 1) * micro], np.arange(i * micro, (i + 1) * micro), grammar, spec, "train", 1) for i in range(n_batches)]
    batch_ms = (time.perf_counter() - t0) / n_batches * 1000
    if args.compile:
        batches = [b.pad_to_multiple(args.length_bucket) for b in batches]
    step_model = compiled(model) if args.compile else model
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
        torch.cuda.reset_peak_memory_stats(device)
    it = iter(batches)
    times, tokens, warm = [], 0, 0.0
    for u in range(args.warmup + args.updates):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = train_update(step_model, opt, it, n_micro, 1e-4, 1.0, device, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if u >= args.warmup:
            times.append(time.perf_counter() - t)
            tokens += out["steps"]
        else:
            warm += time.perf_counter() - t
    total = sum(times)
    return {
        "arch": arch, "task": task, "variant": "compiled" if args.compile else "eager", "recompute": args.recompute, "feat": args.feat, "layers": args.layers, "batch": args.batch, "micro": micro,
        "mean_len": round(tokens / (args.updates * args.batch)), "params_M": round(model.num_parameters() / 1e6, 3),
        "updates_per_s": round(args.updates / total, 3), "tokens_per_s": round(tokens / total),
        "update_ms_median": round(statistics.median(times) * 1000, 1), "batch_ms": round(batch_ms, 1),
        "peak_mem_GiB": round(runio.peak_memory_bytes(device) / 2**30, 2), "warm_s": round(warm, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--feat", type=int, default=None, help="feat size (default: 32 on CPU, 256 on CUDA)")
    p.add_argument("--layers", type=int, default=None, help="layers (default: 2 on CPU, 8 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 8 on CPU, 64 on CUDA)")
    p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS), help="default: task1 on CPU, task1 task2 on CUDA")
    p.add_argument("--archs", nargs="+", default=None, help="default: every registered architecture")
    p.add_argument("--plugins", nargs="*", default=[], help="extra modules/.py files registering architectures")
    p.add_argument("--updates", type=int, default=None, help="timed updates (default: 3 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates first (default: 1)")
    p.add_argument("--compile", action="store_true", help="the `compile: true` training path (static shapes, padded lengths)")
    p.add_argument("--length-bucket", type=int, default=256, help="with --compile: pad batches to multiples of this (default 256)")
    p.add_argument("--recompute", action="store_true", help="activation recomputation per layer")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="results directory")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.feat = args.feat or (256 if cuda else 32)
    args.layers = args.layers or (8 if cuda else 2)
    args.batch = args.batch or (64 if cuda else 8)
    args.updates = args.updates or (10 if cuda else 3)
    tasks = args.tasks or (["task1", "task2"] if cuda else ["task1"])
    dtype = torch.bfloat16 if cuda else torch.float32
    load_plugins(args.plugins)
    archs = args.archs or available()
    grammar = generate_grammar(40, seed=1)

    rows = []
    for task in tasks:
        for arch in archs:
            try:
                row = bench_one(arch, task, grammar, args, device, dtype)
            except Exception as err:  # one broken architecture must not hide the others
                row = {"arch": arch, "task": task, "error": f"{type(err).__name__}: {str(err)[:120]}"}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
            if cuda:
                torch.cuda.empty_cache()

    cols = ["arch", "task", "variant", "recompute", "feat", "layers", "batch", "micro", "mean_len", "params_M", "updates_per_s", "tokens_per_s", "update_ms_median", "batch_ms", "peak_mem_GiB", "warm_s", "error"]
    dev_name = runio.describe_device(device)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())  # the CPU may be shared: say how busy it was
    head = f"bench_train {stamp} on {platform.node()} / {dev_name} / torch {torch.__version__} / {str(dtype)[6:]} / load avg {load}"
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    print(head)
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"bench_train_{datetime.date.today():%Y%m%d}_{platform.node()}_{'cuda' if cuda else 'cpu'}{'_compiled' if args.compile else ''}"
    cmd = "python bench/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / f"{tag}.md").write_text(f"# {head}\n\ncommand: `{cmd}`\n\n" + "\n".join(table) + "\n")
    with open(out / f"{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / tag}.md and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

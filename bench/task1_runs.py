"""Real Task-1 trainings, one per architecture, through `selectivbench train`; prints and records a table.

    python bench/task1_runs.py --size 20000 --feat 256 --out bench/results/task1_gpu.md [--archs ...]

Materializes the amb-40 seed-1 dataset (if missing), trains every architecture for one pass over
it (warm-up scaled from the paper's 476 of 3125 updates), and tabulates time, tokens/s and accuracy
from each run's metrics.json. Each run directory is kept under --work, so a second call resumes or
skips finished runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ARCHS = ["transformer", "mamba2", "delta_net", "gated_delta_net", "gla", "gated_delta_product", "mamba"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=ARCHS)
    p.add_argument("--size", type=int, default=20000, help="training samples (one pass)")
    p.add_argument("--feat", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work", default="/tmp/selectivbench-task1", help="datasets and run directories")
    p.add_argument("--time-limit", type=int, default=0, help="stop starting new runs after this many seconds")
    p.add_argument("--out", default="bench/results/task1_runs.md")
    p.add_argument("--set", action="append", default=[], help="extra train config key=value")
    args = p.parse_args()

    work = Path(args.work)
    data = work / f"amb40_seed{args.seed}_n{args.size}"
    py = [sys.executable, "-m", "selectivbench"]
    if not (data / "meta.json").exists():
        subprocess.run(py + ["dataset", "--amb", "40", "--seed", str(args.seed), "--size", str(args.size),
                             "--workers", str(min(16, os.cpu_count() or 1)), "--out", str(data)], check=True)
    warmup = max(1, round(476 * (args.size // 64) / 3125))
    t_start, rows = time.time(), []
    for arch in args.archs:
        if args.time_limit and time.time() - t_start > args.time_limit:
            rows.append({"arch": arch, "status": "not run (time limit)"})
            continue
        run = work / f"{arch}_feat{args.feat}"
        cmd = py + ["train", "--dataset", str(data), "--out", str(run), "--set", "task=task1", "--set", f"arch={arch}",
                    "--set", f"feat_size={args.feat}", "--set", f"lr={args.lr}", "--set", f"warmup={warmup}",
                    "--set", f"seed={args.seed}", "--set", "progress=off"]
        for kv in args.set:
            cmd += ["--set", kv]
        rc = subprocess.run(cmd).returncode
        metrics_file = run / "metrics.json"
        if not metrics_file.exists():
            rows.append({"arch": arch, "status": f"no metrics (exit {rc})"})
            continue
        m = json.loads(metrics_file.read_text())
        rows.append({"arch": arch, **m})
        print(json.dumps({k: m.get(k) for k in ("status", "final_test_acc", "wall_s", "tokens_per_s")}), flush=True)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    head = (f"# Task 1 runs: amb 40, seed {args.seed}, {args.size} training samples (one pass), feat {args.feat}, "
            f"lr {args.lr}, warm-up {warmup}\n\n{datetime.date.today()} on {device}, torch {torch.__version__}. "
            f"Command: `python bench/task1_runs.py --size {args.size} --feat {args.feat}`.\n\n"
            "| arch | status | params | updates | wall s | train s | tokens/s | final test acc | best test acc | peak GiB | micro-batch |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        def f(key, fmt):
            v = r.get(key)
            return "–" if v is None else format(v, fmt)
        peak = r.get("peak_memory_bytes")
        lines.append(f"| {r['arch']} | {r.get('status')} | {f('num_parameters', ',')} | {f('updates', 'd')} | {f('wall_s', '.0f')} | "
                     f"{f('train_s', '.0f')} | {f('tokens_per_s', ',.0f')} | {f('final_test_acc', '.4f')} | {f('best_test_acc', '.4f')} | "
                     f"{'–' if peak is None else format(peak / 2**30, '.1f')} | {f('micro_batch', 'd')} |")
    md = "\n".join(lines) + "\n"
    print(md)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

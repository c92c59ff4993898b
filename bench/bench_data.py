"""Benchmark: materialize one SelectivBench training set and check it against the reference sampler.

    python bench/bench_data.py [--amb 40] [--seed 1] [--size 200000] [--workers N] [--check 200]

Runs `selectivbench.dataset.materialize` (grammar, lock-step sampler on N processes, atomic .npy
writes, hashing) into a temporary directory, prints time, samples/s and peak memory (this process
and its children), then compares `--check` samples spread over the whole index range with
tests/reference_sampler.py (the straightforward per-sample algorithm of spec §4), and writes
bench/results/data.md (or --results).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference_sampler import reference_classes  # noqa: E402

from selectivbench.dataset import load_dataset, materialize  # noqa: E402
from selectivbench.sampling import default_workers  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> str:
    """`nproc` (without OMP_NUM_THREADS, which GNU nproc obeys) and the cores this process may use."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT")}
    try:
        n = subprocess.run(["nproc"], capture_output=True, text=True, check=True, env=env).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        n = str(os.cpu_count())
    return f"{n} (usable by this process: {default_workers()})"


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size (MiB) of this process and of its largest waited-for child."""
    kib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731  (Linux: KiB)
    return kib(resource.RUSAGE_SELF), kib(resource.RUSAGE_CHILDREN)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--amb", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=default_workers())
    p.add_argument("--check", type=int, default=200, help="samples compared with the reference sampler")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "data.md"))
    p.add_argument("--launcher", default="", help="how python was launched (e.g. 'taskset -c 0,1 python3'), for the record")
    args = p.parse_args()
    command = (f"{args.launcher or 'python'} bench/bench_data.py --amb {args.amb} --seed {args.seed} --size {args.size} "
               f"--workers {args.workers} --check {args.check}")

    load_before = os.getloadavg()
    cpu0 = os.times()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        t0 = time.perf_counter()
        meta = materialize(Path(tmp) / "ds", args.amb, args.seed, args.size, workers=args.workers, progress=True)
        wall = time.perf_counter() - t0
        cpu1 = os.times()
        rss_self, rss_child = peak_rss_mib()
        load_after = os.getloadavg()

        ds = load_dataset(Path(tmp) / "ds")
        idx = np.unique(np.linspace(0, args.size - 1, args.check).round().astype(int))
        t = time.perf_counter()
        ref = reference_classes(ds.grammar, args.seed, idx)
        ref_ms = (time.perf_counter() - t) / len(idx) * 1e3
        mismatches = int((np.asarray(ds.train[idx]) != ref).any(axis=1).sum())

    tm = meta["timings"]
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + (cpu1.children_user - cpu0.children_user) + (
        cpu1.children_system - cpu0.children_system)
    rows = [
        ("samples", f"{args.size} (amb {args.amb}, seed {args.seed}, fingerprint {meta['fingerprint']})"),
        ("workers", str(args.workers)),
        ("grammar generation", f"{tm['grammar_s']:.2f} s"),
        ("sampling (train)", f"{tm['train_s']:.1f} s = {args.size / tm['train_s']:.0f} samples/s"),
        ("materialize total (incl. .npy writes, hashes)", f"{wall:.1f} s"),
        ("CPU time, all processes", f"{cpu_s:.1f} s = {args.size / cpu_s:.0f} samples per CPU-second"),
        ("peak RSS: main / largest child", f"{rss_self:.0f} MiB / {rss_child:.0f} MiB"),
        ("bit-exact vs tests/reference_sampler.py", f"{len(idx) - mismatches}/{len(idx)} samples identical "
                                                     f"(indices {idx[0]}..{idx[-1]}, evenly spread)"),
        ("reference sampler speed", f"{ref_ms:.1f} ms/sample -> {args.size * ref_ms / 1e3 / 60:.0f} min single-core "
                                    f"for {args.size}"),
        ("load average before / after", f"{load_before[0]:.2f} / {load_after[0]:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    table = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    print(table)

    machine = f"`nproc` = {nproc()}, {cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}"
    md = [
        "# Data generation benchmark",
        "",
        f"Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ",
        f"Machine: {machine}  ",
        f"Command: `{command}`",
        "",
        "Timings are wall-clock on a machine whose cores are shared with other jobs (see the load",
        "average); the CPU-time row is less sensitive to that.",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(md))
    print(f"wrote {args.results}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

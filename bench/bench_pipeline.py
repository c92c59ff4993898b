"""Wall time of the workflow: the quick config end to end, and building the paper DAG.

    python bench/bench_pipeline.py                 # both
    python bench/bench_pipeline.py --skip-quick    # only the DAG builds

Each measurement runs `python -m snakemake` in a fresh temporary working directory
(`--directory`), so the repository's results/ is untouched and nothing is cached. CPU time is
user + sys of the whole process tree; the load average shows how busy the shared machine was.
Prints a table and writes bench/results/pipeline.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "config/config.yaml"
PAPER = ROOT / "config/paper.yaml"


def timed(args: list[str], workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    text = out.stdout + out.stderr
    total = re.search(r"^total\s+(\d+)$", text, re.M)
    done = re.search(r"(\d+) of (\d+) steps \(100%\) done", text)
    jobs = int(total[1]) if total else (int(done[2]) if done else None)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dict(wall_s=wall, cpu_s=cpu, jobs=jobs, load_before=load, load_after=os.getloadavg()[0],
                command="snakemake " + " ".join(a.replace(str(ROOT) + "/", "") for a in args))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skip-quick", action="store_true", help="only time the DAG builds")
    p.add_argument("--cores", default="all", help="--cores of the quick run (default: all)")
    args = p.parse_args()
    rows = []
    paper = ["--configfile", str(QUICK), str(PAPER)]  # as `--configfile config/paper.yaml` merges it over the default
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("paper DAG build (dry run, quiet)", timed(["-n", "-q", *paper], Path(tmp))))
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("paper dry run listing every job", timed(["-n", *paper], Path(tmp))))
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("quick DAG build (dry run)", timed(["-n", "--quiet", "rules", "--configfile", str(QUICK)], Path(tmp))))
    if not args.skip_quick:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((f"quick run (--cores {args.cores})", timed(["--cores", args.cores, "--configfile", str(QUICK)], Path(tmp))))

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = f"# bench_pipeline {stamp} on {platform.node()} ({os.cpu_count()} CPUs, {platform.processor() or platform.machine()})"
    lines = [head, "", "command: `python bench/bench_pipeline.py" + (" --skip-quick" if args.skip_quick else "") + "`", "",
             "Shared machine: other people's jobs ran at the same time (load average columns); wall times are upper bounds.", "",
             "| measurement | jobs | wall (s) | CPU user+sys (s) | load avg before / after | command |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['jobs'] if r['jobs'] is not None else '—'} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['load_before']:.1f} / {r['load_after']:.1f} | `{r['command']}` |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench/results/pipeline.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Running a config in chunks on machines that keep nothing (bench/replicate_on_gpu.sh, issue 9).

    python -m selectivbench.analysis.replication status  --configfile config/replication.yaml
    python -m selectivbench.analysis.replication prepare --configfile config/replication.yaml [--retry-failed]
    python -m selectivbench.analysis.replication targets --configfile config/replication.yaml
    python -m selectivbench.analysis.replication pack    --configfile config/replication.yaml --out CHUNK.tar.gz

Each chunk starts from the committed small files of the finished runs (metrics.json, config.yaml,
evals.csv, logs); datasets are regenerated and checkpoints are gone. Snakemake is then asked for
the *missing* metrics.json files only (`targets`), so finished runs are not even in its DAG: a
dataset regenerated for an unfinished run cannot make them outdated, whatever the file times.

* `prepare` (before Snakemake): a trained run whose job outputs or Task-4 evaluations are not all
  there, and whose checkpoint is gone, can no longer be tested: its files are deleted so that it is
  trained again, with its tests in the same chunk. `--retry-failed` also deletes runs and
  evaluations recorded as failed (e.g. a CUDA out-of-memory on a shared GPU).
* `pack` (after Snakemake): the small files of every finished job (a run only when all outputs of
  its job exist) and the aggregated rows (runs.csv, runs.parquet, curves.parquet) into one
  tarball, paths relative to the repository root: `tar -xzf CHUNK.tar.gz` there. No checkpoint,
  no dataset, no grammar (regenerated in a second on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

from selectivbench.analysis.plan import (GAP_EVAL_LOG, GAP_TASK, RUN_LOG, Evaluation, Plan, Run, fmt, plan,
                                         registered_architectures, rooted)

RUN_FILES = ("metrics.json", "config.yaml", "evals.csv", "train.log")
EVAL_FILES = ("metrics.json",)


def status_of(metrics: Path) -> str | None:
    try:
        return json.loads(metrics.read_text()).get("status", "completed")
    except FileNotFoundError:
        return None
    except ValueError:
        return "unreadable"


def job_evaluations(p: Plan) -> dict[Run, list[Evaluation]]:
    """Per trained run, the evaluations that need its checkpoint: its other test splits (made by
    its own job) and its Task-4 gaps."""
    out: dict[Run, list[Evaluation]] = {}
    for ev in p.evaluations:
        if not ev.skipped:
            out.setdefault(ev.run, []).append(ev)
    return out


def split_outputs(p: Plan, run: Run) -> list[Evaluation]:
    """The other-split tests declared as outputs of the run's own training job."""
    return [e for e in job_evaluations(p).get(run, []) if e.task == run.task]


def job_complete(p: Plan, run: Run) -> bool:
    """All outputs of the run's training job exist (metrics.json and its other-split tests)."""
    return Path(run.dir, "metrics.json").is_file() and all(Path(e.dir, "metrics.json").is_file() for e in split_outputs(p, run))


def remove(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def prepare(p: Plan, retry_failed: bool = False, log=print) -> list[Run]:
    """Delete what cannot be completed without retraining (see the module doc); returns the runs reset."""
    if retry_failed:
        for item in [r for r in p.runs if not r.skipped] + [e for e in p.evaluations if not e.skipped]:
            if status_of(Path(item.dir, "metrics.json")) == "failed":
                log(f"retry failed: {item.dir}")
                remove(Path(item.dir, "metrics.json"))
    reset = []
    evaluations = job_evaluations(p)
    runs = {r for r in p.runs if not r.skipped} | {e.run for e in p.evaluations if not e.skipped}
    for run in sorted(runs, key=lambda r: r.dir):
        metrics = Path(run.dir, "metrics.json")
        if not metrics.is_file() or Path(run.dir, "checkpoint.pt").is_file():
            continue
        if status_of(metrics) == "failed":
            continue  # its tests are recorded as failed without a checkpoint
        missing = [e for e in evaluations.get(run, []) if not Path(e.dir, "metrics.json").is_file()]
        if not missing:
            continue
        log(f"retrain {run.dir}: {len(missing)} test(s) missing and no checkpoint")
        remove(run.dir)
        for ev in evaluations.get(run, []):
            remove(ev.dir)
        reset.append(run)
    return reset


def missing_targets(p: Plan) -> list[str]:
    """The metrics.json files still to make: training jobs (their other-split tests included),
    then Task-4 evaluations. Run `prepare` first."""
    out = []
    for run in p.runs:
        if not run.skipped:
            outputs = [run.dir] + [e.dir for e in split_outputs(p, run)]
            out += [f"{d}/metrics.json" for d in outputs if not Path(d, "metrics.json").is_file()]
    out += [f"{e.dir}/metrics.json" for e in p.evaluations
            if not e.skipped and e.task == GAP_TASK and not Path(e.dir, "metrics.json").is_file()]
    return out


def finished_files(p: Plan) -> list[Path]:
    """The small files of every finished job (runs only when their whole job finished)."""
    files: list[Path] = []
    complete = set()
    for run in p.runs:
        if run.skipped or not job_complete(p, run):
            continue
        complete.add(run)
        files += [Path(run.dir, name) for name in RUN_FILES if Path(run.dir, name).is_file()]
        job_log = Path(rooted(RUN_LOG, p.root).format(**run.keys))
        files += [job_log] if job_log.is_file() else []
    for ev in p.evaluations:
        if ev.skipped or not Path(ev.dir, "metrics.json").is_file():
            continue
        if ev.task == ev.run.task and ev.run not in complete:
            continue  # part of an unfinished training job
        files += [Path(ev.dir, name) for name in EVAL_FILES]
        if ev.task == GAP_TASK:
            job_log = Path(rooted(GAP_EVAL_LOG, p.root).format(**ev.run.keys, split=ev.split, gap=fmt(ev.test_gap)))
            files += [job_log] if job_log.is_file() else []
    return files


def write_packed_rows(p: Plan, packed: list[Path]) -> list[Path]:
    """runs.{parquet,csv} and curves.parquet of exactly the packed jobs: a row whose metrics.json
    is not packed (its job did not finish) is `missing`, as it will be where the tarball lands."""
    import pandas as pd

    from selectivbench.analysis.aggregate import KEY_COLUMNS, results_table, training_curves

    root = Path(p.root)
    root.mkdir(parents=True, exist_ok=True)
    done = {str(f.parent) for f in packed if f.name == "metrics.json"}
    rows = results_table(p)
    lost = ~rows["path"].isin(done) & ~rows["status"].isin(["skipped", "missing"])
    keep = KEY_COLUMNS + ["path", "source_run"]
    rows.loc[lost, [c for c in rows.columns if c not in keep]] = pd.NA
    rows.loc[lost, "status"] = "missing"
    curves = training_curves(p)
    if len(curves):
        finished = [r for r in p.runs if r.dir in done]
        curves = curves.merge(pd.DataFrame([dict(task=r.task, arch=r.arch, feat=r.feat, amb=r.amb, lr=r.lr, warmup=r.warmup, seed=r.seed)
                                            for r in finished], columns=["task", "arch", "feat", "amb", "lr", "warmup", "seed"]))
    paths = [root / "runs.parquet", root / "runs.csv", root / "curves.parquet"]
    rows.to_parquet(paths[0], index=False)
    rows.to_csv(paths[1], index=False)
    curves.to_parquet(paths[2], index=False)
    return paths


def pack(p: Plan, out: str | Path, extra: list[str | Path] = (), log=print) -> list[Path]:
    """Aggregate the rows and write the tarball; returns the files packed."""
    files = finished_files(p)
    files += write_packed_rows(p, files)
    files += [Path(x) for x in extra if Path(x).is_file()]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=os.path.normpath(f))
    log(f"packed {len(files)} files into {out} ({Path(out).stat().st_size / 1e6:.2f} MB)")
    return files


def summary(p: Plan) -> str:
    """Finished / failed / missing jobs per task (Task 4 and other splits as evaluations)."""
    counts: Counter = Counter()
    for run in p.runs:
        if not run.skipped:
            counts[(run.task, "train", status_of(Path(run.dir, "metrics.json")) or "missing")] += 1
    for ev in p.evaluations:
        if not ev.skipped:
            kind = "task4" if ev.task == GAP_TASK else f"test {ev.split}"
            counts[(ev.task if ev.task == GAP_TASK else ev.run.task, kind, status_of(Path(ev.dir, "metrics.json")) or "missing")] += 1
    lines = [f"{'task':<7}{'job':<15}{'status':<12}{'n':>5}"]
    lines += [f"{t:<7}{k:<15}{s:<12}{n:>5}" for (t, k, s), n in sorted(counts.items())]
    return "\n".join(lines)


def cli_main(argv: list[str]) -> int:
    from selectivbench.analysis.workflow_config import ConfigError
    from selectivbench.estimate import load_config

    ap = argparse.ArgumentParser(prog="python -m selectivbench.analysis.replication", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["status", "prepare", "targets", "pack", "root"])
    ap.add_argument("--configfile", nargs="+", required=True, help="workflow config(s), merged over --default-config")
    ap.add_argument("--default-config", default="config/config.yaml")
    ap.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    ap.add_argument("--retry-failed", action="store_true", help="prepare: also redo runs/evaluations recorded as failed")
    ap.add_argument("--out", help="pack: the tarball to write")
    ap.add_argument("--extra", nargs="*", default=[], help="pack: more files to include (e.g. the Snakemake log)")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.configfile, args.default_config, args.schema)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    registered_architectures(config)
    p = plan(config)
    if args.command == "root":  # the config's results_dir
        print(p.root)
        return 0
    if args.command == "targets":  # for the command line of snakemake: nothing else on stdout
        for target in missing_targets(p):
            print(target)
        return 0
    if args.command == "prepare":
        reset = prepare(p, args.retry_failed)
        print(f"prepare: {len(reset)} run(s) to retrain (tests missing, checkpoint gone)")
    elif args.command == "pack":
        if not args.out:
            print("pack needs --out TARBALL", file=sys.stderr)
            return 2
        pack(p, args.out, args.extra)
    print(summary(p))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))

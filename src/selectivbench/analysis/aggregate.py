"""All runs and evaluations of a plan -> one results table (one row per run) + training curves.

Nothing is dropped: a skipped size, a diverged or a failed run is a row with its `status`;
a run directory without metrics.json is `missing`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import yaml

from selectivbench.analysis.plan import Evaluation, Plan, Run

KEY_COLUMNS = ["kind", "task", "arch", "feat", "amb", "lr", "warmup", "seed", "test_split", "test_gap"]
METRIC_COLUMNS = [
    "status", "test_acc", "test_loss", "val_acc", "val_loss", "best_test_acc", "num_parameters", "state_size",
    "updates", "samples", "config_hash", "grammar", "config", "wall_s", "gpu_hours", "device", "peak_memory_bytes", "error", "source_run", "path",
]
COLUMNS = KEY_COLUMNS + METRIC_COLUMNS


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def run_config(run_dir: str) -> str | None:
    """The run's resolved config.yaml (every key, dataset identity included) as one JSON string."""
    try:
        text = Path(run_dir, "config.yaml").read_text()
    except FileNotFoundError:
        return None
    return json.dumps(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), sort_keys=True)


def cost(metrics: dict) -> tuple[float | None, float | None]:
    """(wall seconds, GPU-hours) of a run or evaluation; GPU-hours count on CUDA devices only."""
    wall = metrics.get("wall_s")
    on_gpu = "cpu" not in str(metrics.get("device", "cpu")).lower()
    return wall, (wall / 3600 if wall is not None and on_gpu else (0.0 if wall is not None else None))


def base_row(run: Run) -> dict:
    return dict(task=run.task, arch=run.arch, feat=run.feat, amb=run.amb, lr=run.lr, warmup=run.warmup, seed=run.seed)


def run_row(run: Run, train_split: str) -> dict:
    row = dict(kind="train", **base_row(run), test_split=train_split, test_gap=math.nan, path=run.dir)
    if run.skipped:
        return {**row, "status": "skipped", "error": f"{run.arch} has no model at feat_size {run.feat}"}
    m = read_json(Path(run.dir, "metrics.json"))
    if m is None:
        return {**row, "status": "missing"}
    wall, gpu_hours = cost(m)
    return {
        **row,
        "status": m.get("status", "unknown"),
        "test_acc": m.get("final_test_acc"),  # the authors' headline: the last evaluation (§11)
        "test_loss": m.get("final_test_loss"),
        "val_acc": m.get("val_acc"),
        "val_loss": m.get("val_loss"),
        "best_test_acc": m.get("best_test_acc"),
        "num_parameters": m.get("num_parameters"),
        "state_size": m.get("state_size"),
        "updates": m.get("updates"),
        "samples": m.get("samples"),
        "config_hash": m.get("config_hash"),  # run config; with `grammar` it identifies the run
        "grammar": (m.get("dataset") or {}).get("grammar"),
        "config": run_config(run.dir),
        "wall_s": wall,
        "gpu_hours": gpu_hours,
        "device": m.get("device"),
        "peak_memory_bytes": m.get("peak_memory_bytes"),
        "error": m.get("error"),
    }


def evaluation_row(ev: Evaluation, source: dict) -> dict:
    """An evaluation inherits the identity, size and validation accuracy of the run it tests."""
    row = dict(kind="evaluate", **base_row(ev.run))
    row.update(task=ev.task, test_split=ev.split, path=ev.dir, source_run=ev.run.dir)
    row["test_gap"] = ev.test_gap if ev.test_gap is not None else math.nan
    inherited = {k: source.get(k) for k in ("val_acc", "val_loss", "num_parameters", "state_size", "config_hash", "grammar", "config")}
    if ev.skipped:
        return {**row, "status": "skipped", "error": source.get("error")}
    m = read_json(Path(ev.dir, "metrics.json"))
    if m is None:
        return {**row, **inherited, "status": "missing"}
    wall, gpu_hours = cost(m)
    status = m.get("status") or ("diverged" if m.get("run_status") == "diverged" else "completed")
    return {
        **row,
        **inherited,
        "status": status,
        "test_acc": m.get("test_acc"),
        "test_loss": m.get("test_loss"),
        "val_acc": m.get("val_acc", inherited["val_acc"]),
        # a Task-4 gap is a key; another split's pass runs at the run's own test gap, kept NaN as on
        # the run's row so that both test modes fall into the same figure panels
        "test_gap": m.get("test_gap", row["test_gap"]) if ev.test_gap is not None else row["test_gap"],
        "wall_s": wall,
        "gpu_hours": gpu_hours,
        "device": m.get("device"),
        "peak_memory_bytes": m.get("peak_memory_bytes"),
        "error": m.get("error"),
    }


def results_table(plan: Plan) -> pd.DataFrame:
    rows = [run_row(r, plan.train_split) for r in plan.runs]
    by_dir = {row["path"]: row for row in rows}
    for ev in plan.evaluations:
        source = by_dir.get(ev.run.dir) or run_row(ev.run, plan.train_split)  # Task 4 may use runs of a smaller task-2 grid
        rows.append(evaluation_row(ev, source))
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("test_acc", "test_loss", "val_acc", "val_loss", "best_test_acc", "wall_s", "gpu_hours", "test_gap"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("num_parameters", "state_size", "updates", "samples", "peak_memory_bytes"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("status", "config_hash", "grammar", "config", "device", "error", "source_run", "path"):
        df[col] = df[col].astype("string")
    return df


def training_curves(plan: Plan) -> pd.DataFrame:
    """evals.csv of every trained run, with the run's keys (test accuracy vs samples seen)."""
    frames = []
    for run in plan.runs:
        path = Path(run.dir, "evals.csv")
        if run.skipped or not path.is_file():
            continue
        curve = pd.read_csv(path)
        for key, value in base_row(run).items():
            curve[key] = value
        frames.append(curve)
    if not frames:
        return pd.DataFrame(columns=list(base_row(plan.runs[0]) if plan.runs else []) + ["samples", "test_acc"])
    return pd.concat(frames, ignore_index=True)


def write_results(plan: Plan, parquet: str, csv: str, curves: str) -> pd.DataFrame:
    df = results_table(plan)
    df.to_parquet(parquet, index=False)
    df.to_csv(csv, index=False)
    training_curves(plan).to_parquet(curves, index=False)
    return df

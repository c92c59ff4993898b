"""`selectivbench estimate`: runs and GPU-hours per figure target of a workflow config.

    selectivbench estimate --configfile config/paper.yaml
    selectivbench estimate --configfile config/paper.yaml --init-table   # (re)write estimated rows
    selectivbench estimate --import-bench bench/results/bench_train_<date>_<host>_cuda.csv  # measured rows

The cost of a run is its updates × the time of one update plus its test passes × the time of a
test sample, looked up per (arch, task, feat) in a step-time table (default
bench/results/step_times.csv; columns arch, task, feat, ms_per_update, ms_per_test_sample,
device, source, note). Rows with `source = measured` come from GPU benchmarks; a missing entry,
or a row marked `estimated`, uses the FLOP model below, and the output says which share of the
GPU-hours is estimated.

--import-bench CSV turns a GPU benchmark's rows into `measured` rows (replacing the table's row of
the same arch, task, feat; all other rows stay). Column names are matched case-insensitively,
spaces and '/' read as '_'; accepted names, first match wins:
  arch      arch
  feat      feat, d, d_feat, feat_size        nominal model size
  length    mean_len, T, length, seq_len      mean steps per sample of the timed batches
  batch     batch, B                          samples per update (must be 64, the paper's)
  ms        update_ms_median, ms_step, ms_per_step, ms_per_update, step_ms, ms   ms per update
  optional: task (else the task whose mean training length is `length`, within 3 %; a length
  that is no task's, e.g. a test length, is skipped), layers (must be 8; absent = 8), variant
  (only `eager` = what `selectivbench train` runs), device (else the GPU and precision named in
  the first line of the CSV's sibling .md, else --device), error (a row with one is skipped).
bench/bench_train.py CSVs (real batches) and bench/bench_gpu.py CSVs (fixed-length batches) both fit.

FLOP model (estimated entries, then scaled per architecture by measured/model at its nearest
measured width, see CostModel): an update costs 6·P·B·L FLOPs (+ 6·layers·B·L²·d for softmax
attention), a test sample 2·P·L (+ 2·layers·L²·d), at THROUGHPUT FLOP/s plus OVERHEAD_MS per
update; L is the mean sequence length of the task (spec §6). Config loading follows Snakemake:
config/config.yaml first, then each --configfile on top.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import yaml

THROUGHPUT = 100e12  # FLOP/s assumed for bf16 on one H100 (~10 % of dense peak: small models)
OVERHEAD_MS = 25.0  # per update: kernel launches of 8 layers fwd+bwd, optimizer step
TABLE = "bench/results/step_times.csv"
TABLE_COLUMNS = ["arch", "task", "feat", "ms_per_update", "ms_per_test_sample", "device", "source", "note"]
NUM_ELEMENTS = 200


@functools.lru_cache(maxsize=None)
def mean_length(task: str, split: str, test_gap: float | None = None) -> float:
    """Mean steps of a sample of `task` (spec §6): 200 elements, each followed by its gap."""
    from selectivbench.config import PRESETS
    from selectivbench.inputs import InputSpec

    preset = {k: v for k, v in PRESETS["task2" if task == "task4" else task].items() if k != "d_state"}
    spec = InputSpec(**preset, test_gap=test_gap)
    if split == "train":
        delays = np.round(np.linspace(spec.gap_min, spec.gap_max, 10001), 1)
        steps = float(spec.gap_steps(delays).mean())
    else:
        steps = float(spec.gap_steps(spec.test_delay))
    gapped = spec.gap_prob * (NUM_ELEMENTS - spec.gap_start)
    return NUM_ELEMENTS + gapped * steps


@dataclass
class StepTime:
    ms_per_update: float
    ms_per_test_sample: float
    source: str  # measured | estimated


def model_step_time(params: float, width: int, layers: int, batch: int, attention: bool, train_len: float, test_len: float) -> StepTime:
    attn_train = 6 * layers * batch * train_len**2 * width if attention else 0.0
    attn_test = 2 * layers * test_len**2 * width if attention else 0.0
    update = OVERHEAD_MS + 1e3 * (6 * params * batch * train_len + attn_train) / THROUGHPUT
    test = 1e3 * (2 * params * test_len + attn_test) / THROUGHPUT
    return StepTime(update, test, "estimated")


def read_table(path: str) -> dict[tuple[str, str, int], StepTime]:
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path) as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            out[(row["arch"], row["task"], int(row["feat"]))] = StepTime(float(row["ms_per_update"]), float(row["ms_per_test_sample"]), row["source"])
    return out


def load_config(configfiles: list[str], default: str, schema: str) -> dict:
    """Default config, then each --configfile merged on top (as Snakemake does), validated."""
    from selectivbench.analysis.plan import registered_architectures
    from selectivbench.analysis.workflow_config import check

    def merge(base: dict, new: dict) -> dict:
        for k, v in new.items():
            base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    config: dict = {}
    for path in ([default] if default and os.path.exists(default) else []) + configfiles:
        with open(path) as f:
            merge(config, yaml.safe_load(f) or {})
    return check(config, schema, registered=registered_architectures)


BENCH_AMB = 40  # the grammar size of the GPU benchmarks (bench_gpu, bench_train: V 41, C 1601)


class CostModel:
    """Step times per (arch, task, feat): the table where measured, else the FLOP model scaled by
    how far it was off for the same architecture at its nearest measured width (same task first).
    Measured on an H100 (bench/results/gpu.md), eager steps took 1.3-9x the FLOP model's time,
    Mamba's 39-95x, so the unscaled model would hide most of the cost."""

    def __init__(self, config: dict, table: dict):
        self.config, self.table = config, table
        train = config.get("train", {})
        self.layers = int(train.get("layers", 8))
        self.batch = int(train.get("batch_size", 64))
        self.cache: dict = {}
        self.factors: dict = {}

    def shape(self, arch: str, feat: int, amb: int) -> tuple[float, int]:
        import torch

        from selectivbench.models.wrapper import RecNet

        key = (arch, feat, amb)
        if key not in self.cache:
            with torch.device("meta"):
                m = RecNet(arch, feat, vocab=amb + 1, num_classes=amb * amb + 1, n_layers=self.layers)
            self.cache[key] = (m.num_parameters(), m.width)
        return self.cache[key]

    def step_time(self, arch: str, task: str, feat: int, amb: int, test_gap: float | None = None) -> StepTime:
        hit = self.table.get((arch, task, feat))
        if hit is not None and hit.source == "measured" and test_gap is None:
            return hit
        t = self.flop_model(arch, task, feat, amb, test_gap)
        k = self.calibration(arch, task, feat)
        return StepTime(t.ms_per_update * k, t.ms_per_test_sample * k, "estimated")

    def flop_model(self, arch: str, task: str, feat: int, amb: int, test_gap: float | None = None) -> StepTime:
        params, width = self.shape(arch, feat, amb)
        return model_step_time(params, width, self.layers, self.batch, arch == "transformer",
                               mean_length(task, "train"), mean_length(task, "test", test_gap))

    def calibration(self, arch: str, task: str, feat: int) -> float:
        """measured / FLOP-model update time at the architecture's nearest measured (task, width):
        the same task first, then the nearest width on a log scale; 1 with nothing measured."""
        if (arch, task, feat) not in self.factors:
            measured = [(t != task, abs(math.log(f / feat)), t, f) for (a, t, f), st in self.table.items()
                        if a == arch and st.source == "measured" and t in TRAIN_TASKS]
            k = 1.0
            if measured:
                _, _, t, f = min(measured)
                k = self.table[(arch, t, f)].ms_per_update / self.flop_model(arch, t, f, BENCH_AMB).ms_per_update
            self.factors[(arch, task, feat)] = k
        return self.factors[(arch, task, feat)]


def run_hours(cm: CostModel, config: dict, item) -> tuple[float, bool]:
    """(GPU-hours, estimated?) of one training run or one Task-4 evaluation."""
    from selectivbench.analysis.plan import Evaluation

    from selectivbench.analysis.jobs import task_settings

    data = config["data"]
    if isinstance(item, Evaluation):
        test_size = task_settings(config, "task4", item.run.arch)["test_size"]  # set / arch_set may lower it
        t = cm.step_time(item.run.arch, "task4", item.run.feat, item.run.amb, item.test_gap)
        return test_size * t.ms_per_test_sample / 3.6e6, t.source != "measured"
    train = task_settings(config, item.task, item.arch)  # train + set + arch_set (dataset_size, ...)
    updates = int(train["dataset_size"]) // cm.batch
    if train.get("max_updates"):
        updates = min(updates, int(train["max_updates"]))
    evals = max(1, updates // int(train.get("eval_every", 78)))  # a run shorter than eval_every tests once at the end
    t = cm.step_time(item.arch, item.task, item.feat, item.amb)
    test_ms = (evals * data["test_size"] + data.get("val_size", 0)) * t.ms_per_test_sample
    extra_splits = len(config["test_splits"]) - 1  # the held-out test pass of the same job
    test_ms += extra_splits * data["test_size"] * t.ms_per_test_sample
    return (updates * t.ms_per_update + test_ms) / 3.6e6, t.source != "measured"


def estimate(config: dict, table: dict) -> list[dict]:
    from selectivbench.analysis.plan import figure_runs, plan, registered_architectures

    registered_architectures(config)
    p = plan(config)
    cm = CostModel(config, table)
    hours = {}
    for item in [r for r in p.runs if not r.skipped] + [e for e in p.evaluations if not e.skipped and e.task == "task4"]:
        hours[id(item)] = run_hours(cm, config, item)
    rows = []

    def summarize(target: str, items: list, note: str = "") -> dict:
        live = [i for i in items if not i.skipped]
        h = sum(hours[id(i)][0] for i in live)
        est = sum(hours[id(i)][0] for i in live if hours[id(i)][1])
        trains = sum(1 for i in live if not hasattr(i, "run"))
        return dict(target=target, runs=trains, evaluations=len(live) - trains, skipped=len(items) - len(live),
                    gpu_hours=h, estimated_share=est / h if h else 0.0, note=note)

    by_id = {id(i): i for i in p.runs}
    for target, items in figure_runs(config, p).items():
        note = "subset of task1_complexity" if target == "task1_model_size" else ""
        if target == "task4_gap_generalization":
            note = "evaluations only; needs the task2 runs"
        rows.append(summarize(target, items, note))
    everything = list(by_id.values()) + [e for e in p.evaluations if e.task == "task4"]
    rows.append(summarize("total (unique jobs)", everything, f"{len(config['test_splits'])} test split(s)"))
    return rows


def format_rows(rows: list[dict]) -> str:
    head = f"{'target':<26}{'runs':>8}{'evals':>8}{'skipped':>9}{'GPU-hours':>12}{'estimated':>11}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['target']:<26}{r['runs']:>8}{r['evaluations']:>8}{r['skipped']:>9}{r['gpu_hours']:>12.1f}"
                     f"{r['estimated_share']:>10.0%}  {r['note']}")
    return "\n".join(lines)


def init_table(config: dict, path: str) -> int:
    """Write FLOP-model rows (source = estimated) for every (arch, task, feat) of the config,
    keeping the rows already marked measured."""
    from selectivbench.analysis.plan import plan, registered_architectures

    registered_architectures(config)
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = {(r["arch"], r["task"], int(r["feat"])): r for r in csv.DictReader(line for line in f if not line.startswith("#"))}
    cm = CostModel(config, {})
    keys = sorted({(r.arch, r.task, r.feat, r.amb) for r in plan(config).runs if not r.skipped})
    best_amb = {}
    for arch, task, feat, amb in keys:  # one row per (arch, task, feat): at the task's largest amb
        best_amb[(arch, task, feat)] = max(amb, best_amb.get((arch, task, feat), 0))
    with open(path, "w", newline="") as f:
        f.write(f"# step times per (arch, task, feat); source = measured (GPU benchmark) or estimated "
                f"(FLOP model of selectivbench.estimate: {THROUGHPUT / 1e12:.0f} TFLOP/s + {OVERHEAD_MS:.0f} ms/update)\n")
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        for (arch, task, feat), amb in sorted(best_amb.items()):
            hit = old.get((arch, task, feat))
            if hit is not None and hit["source"] == "measured":
                w.writerow(hit)  # as measured, device and note included
                continue
            t = cm.step_time(arch, task, feat, amb)
            w.writerow(dict(arch=arch, task=task, feat=feat, ms_per_update=f"{t.ms_per_update:.2f}",
                            ms_per_test_sample=f"{t.ms_per_test_sample:.4f}", device="H100 (assumed)", source=t.source,
                            note=f"FLOP model, amb {amb}"))
    return len(best_amb)


# column names accepted by --import-bench (normalized: lower case, runs of other characters -> '_')
BENCH_COLUMNS = {
    "arch": ("arch",),
    "feat": ("feat", "d", "d_feat", "feat_size"),
    "length": ("mean_len", "t", "length", "seq_len"),
    "batch": ("batch", "b"),
    "ms": ("update_ms_median", "ms_step", "ms_per_step", "ms_per_update", "step_ms", "ms"),
    "task": ("task",),
    "layers": ("layers",),
    "variant": ("variant",),
    "device": ("device", "gpu"),
    "error": ("error",),
}
REQUIRED_BENCH_COLUMNS = ("arch", "feat", "length", "batch", "ms")
TRAIN_TASKS = ("task1", "task2", "task3")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def bench_device(bench_csv: str) -> str | None:
    """GPU and precision from the first line of the benchmark's sibling .md
    (`# bench_train <date> on <host> / NVIDIA H100 80GB HBM3 / torch ... / bfloat16 / ...`)."""
    md = os.path.splitext(bench_csv)[0] + ".md"
    if not os.path.exists(md):
        return None
    with open(md) as f:
        parts = [p.strip() for p in f.readline().split("/")]
    gpu = next((p for p in parts if p.startswith(("NVIDIA", "AMD", "Tesla"))), None)
    precision = next((p for p in parts if p in ("bfloat16", "float16", "float32", "bf16", "fp16", "fp32")), None)
    return " ".join(p for p in (gpu, precision) if p) or None


def task_of_length(length: float) -> str | None:
    """The training task whose mean training sample has `length` steps (within 3 %)."""
    return next((t for t in TRAIN_TASKS if abs(mean_length(t, "train") / length - 1) <= 0.03), None)


def import_bench(bench_csv: str, path: str, layers: int = 8, batch: int = 64, device: str | None = None) -> tuple[int, list[str]]:
    """Turn the rows of a GPU benchmark CSV (columns: module doc) measured at the paper's layers
    and batch into `measured` rows of the step-time table; returns (rows imported, why others
    were skipped). A test sample is taken as a third of an update per sample, scaled to the test
    length (forward only)."""
    rows, header = {}, None
    if os.path.exists(path):
        with open(path) as f:
            lines = f.readlines()
        header = next((line for line in lines if line.startswith("#")), None)
        rows = {(r["arch"], r["task"], r["feat"]): r for r in csv.DictReader(line for line in lines if not line.startswith("#"))}
    device = device or bench_device(bench_csv) or os.path.basename(bench_csv).rsplit("_", 1)[-1].removesuffix(".csv")
    n, skipped = 0, []
    with open(bench_csv) as f:
        reader = csv.DictReader(f)
        present = {_norm(c): c for c in reader.fieldnames or []}
        col = {key: next((present[a] for a in names if a in present), None) for key, names in BENCH_COLUMNS.items()}
        missing = [k for k in REQUIRED_BENCH_COLUMNS if col[k] is None]
        if missing:
            raise ValueError(f"{bench_csv}: no column for {', '.join(missing)} (accepted: "
                             + "; ".join(f"{k}: {', '.join(BENCH_COLUMNS[k])}" for k in missing) + ")")
        for i, raw in enumerate(reader, start=2):
            b = {k: (raw[c] or "").strip() if c else "" for k, c in col.items()}
            where = f"line {i} ({b['arch']} feat {b['feat']} length {b['length']})"
            task = b["task"] or task_of_length(float(b["length"] or "nan"))
            reason = ("error: " + b["error"] if b["error"] else "no time" if not b["ms"]
                      else f"variant {b['variant']}" if b["variant"] not in ("", "eager")
                      else f"layers {b['layers']} != {layers}" if b["layers"] and int(b["layers"]) != layers
                      else f"batch {b['batch']} != {batch}" if int(b["batch"]) != batch
                      else "length is no task's mean training length" if task is None else None)
            if reason:
                skipped.append(f"{where}: {reason}")
                continue
            update = float(b["ms"])
            test = update / (3 * batch) * mean_length(task, "test") / float(b["length"])
            rows[(b["arch"], task, str(int(b["feat"])))] = dict(
                arch=b["arch"], task=task, feat=str(int(b["feat"])), ms_per_update=f"{update:.2f}", ms_per_test_sample=f"{test:.4f}",
                device=b["device"] or device, source="measured",
                note=f"{os.path.basename(bench_csv)}: length {b['length']}; test pass derived (forward = update/3)")
            n += 1
    with open(path, "w", newline="") as f:
        f.write(header or "# step times per (arch, task, feat); source = measured (GPU benchmark) or estimated (FLOP model)\n")
        w = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        w.writeheader()
        w.writerows(sorted(rows.values(), key=lambda r: (r["arch"], r["task"], int(r["feat"]))))
    return n, skipped


def table_summary(table: dict, config: dict) -> str:
    """How many table rows are measured, and how many of the config's (arch, task, feat) they cover."""
    from selectivbench.analysis.plan import plan

    measured = {k for k, t in table.items() if t.source == "measured"}
    keys = {(r.arch, r.task, r.feat) for r in plan(config).runs if not r.skipped}
    return (f"{len(measured)} of {len(table)} rows measured, {len(table) - len(measured)} estimated; "
            f"{len(keys & measured)} of the config's {len(keys)} (arch, task, feat) use a measured step time")


def cli_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="selectivbench estimate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", nargs="+", default=[], help="workflow config(s), merged over --default-config")
    p.add_argument("--default-config", default="config/config.yaml", help="the Snakefile's default config (default: %(default)s)")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml", help="config schema (default: %(default)s)")
    p.add_argument("--step-times", default=TABLE, help="step-time table (default: %(default)s)")
    p.add_argument("--init-table", action="store_true", help="write estimated rows for the config's grid into --step-times (measured rows kept)")
    p.add_argument("--import-bench", metavar="CSV", help="add the rows of a GPU benchmark CSV (8 layers, batch 64; columns: see above) "
                                                        "to --step-times as measured")
    p.add_argument("--device", help="with --import-bench: the device to record (default: from the CSV or its sibling .md)")
    args = p.parse_args(argv)
    if args.import_bench:
        try:
            n, skipped = import_bench(args.import_bench, args.step_times, device=args.device)
        except (OSError, ValueError) as err:
            print(f"selectivbench estimate: error: --import-bench: {err}", file=sys.stderr)
            return 2
        print(f"{n} measured rows from {args.import_bench} into {args.step_times}")
        for line in skipped:
            print(f"  skipped {line}")
        return 0
    from selectivbench.analysis.workflow_config import ConfigError

    try:
        config = load_config(args.configfile, args.default_config, args.schema)
    except (ConfigError, OSError) as err:
        print(f"selectivbench estimate: error: {err}", file=sys.stderr)
        return 2
    if args.init_table:
        n = init_table(config, args.step_times)
        print(f"wrote {n} rows to {args.step_times}")
        return 0
    table = read_table(args.step_times)
    rows = estimate(config, table)
    print(f"config: {' + '.join([args.default_config] + args.configfile)}; step times: {args.step_times}")
    print(f"step times: {table_summary(table, config)}")
    print(format_rows(rows))
    if any(r["estimated_share"] > 0 for r in rows):
        print("estimated = share of the GPU-hours from the FLOP model (no measured step time at that width), "
              "scaled by measured/model at the architecture's nearest measured width")
    return 0 if all(math.isfinite(r["gpu_hours"]) for r in rows) else 1

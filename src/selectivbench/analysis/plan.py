"""The experiment grid of a workflow config: which grammars, datasets, runs and evaluations exist.

One function enumerates the grid so that the Snakefile (its targets), the aggregation (the rows
it expects, skipped sizes included) and `selectivbench estimate` (the cost) cannot disagree.
Path templates live here for the same reason: the rules fill them with wildcards, `Run.dir`
fills them with values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

TRAIN_TASKS = ("task1", "task2", "task3")
GAP_TASK, GAP_SOURCE_TASK = "task4", "task2"  # Task 4 evaluates Task-2 checkpoints (spec §9)
TEST_SPLITS = ("faithful", "heldout")

RUN_NAME = "feat{feat}_amb{amb}_lr{lr}_wu{warmup}_seed{seed}"
RUN_DIR = "results/runs/{task}/{arch}/" + RUN_NAME
GAP_EVAL_DIR = "results/evals/task4/{split}/{arch}/" + RUN_NAME + "_gap{gap}"
SPLIT_EVAL_DIR = "results/evals/{task}/{split}/{arch}/" + RUN_NAME
DATA_DIR = "results/data/{split}/amb{amb}_seed{seed}"

# the files the rules declare (the rules only name these; no path arithmetic in the Snakefile)
RUN_METRICS = RUN_DIR + "/metrics.json"
GAP_EVAL_METRICS = GAP_EVAL_DIR + "/metrics.json"
SPLIT_EVAL_METRICS = SPLIT_EVAL_DIR + "/metrics.json"
DATA_FILES = {name: f"{DATA_DIR}/{name}" for name in ("meta.json", "classes.npy", "test_classes.npy", "transitions.txt")}
RUN_LOG = "logs/train_run/{task}/{arch}/" + RUN_NAME + ".log"
GAP_EVAL_LOG = "logs/evaluate_gap_generalization/{split}/{arch}/" + RUN_NAME + "_gap{gap}.log"

GRAMMAR_FILE = "results/grammars/amb{amb}_seed{seed}.txt"
GRAMMAR_SUMMARY = "results/grammars/amb{amb}_seed{seed}.json"

# The templates above use the default results directory; config key `results_dir` moves a
# config's whole output tree (results/, logs/, benchmarks/) under another folder, e.g.
# results/replication (the committed one).
DEFAULT_RESULTS_DIR = "results"


def rooted(path: str, results_dir: str = DEFAULT_RESULTS_DIR) -> str:
    """A path (template) of the default tree under `results_dir`.

    results/X -> <results_dir>/X; logs/X, benchmarks/X -> <results_dir>/logs/X, .../benchmarks/X.
    With the default results_dir every path is unchanged.
    """
    if results_dir == DEFAULT_RESULTS_DIR:
        return path
    root = results_dir.rstrip("/")
    if path.startswith("results/"):
        return root + path[len("results"):]
    if path.startswith(("logs/", "benchmarks/")):
        return f"{root}/{path}"
    return path

# Regexes for the wildcards above: specific enough that every path matches one rule only,
# and cheap to match (the paper DAG has ~15 000 jobs).
WILDCARD_CONSTRAINTS = {
    "task": "task[123]",
    "arch": "[A-Za-z0-9_]+",
    "feat": r"\d+",
    "amb": r"\d+",
    "lr": r"[0-9.e+-]+",
    "warmup": r"\d+",
    "seed": r"\d+",
    "gap": r"[0-9.]+",
    "split": "|".join(TEST_SPLITS),
}


def with_split(template: str, split: str) -> str:
    """A template with the test split fixed (the other wildcards stay)."""
    return template.replace("{split}", split)


def with_task(template: str, task: str) -> str:
    return template.replace("{task}", task)


def fmt(x: float | int) -> str:
    """A number as it appears in paths: 5e-4 -> '0.0005', 1000 -> '1000', 2.0 -> '2'."""
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Run:
    """One training run (Tasks 1-3)."""

    task: str
    arch: str
    feat: int
    amb: int
    lr: float
    warmup: int
    seed: int
    skipped: bool = field(default=False, compare=False)  # the architecture has no model at this feat
    root: str = field(default=DEFAULT_RESULTS_DIR, compare=False)  # the config's results_dir

    @property
    def keys(self) -> dict:
        return dict(task=self.task, arch=self.arch, feat=self.feat, amb=self.amb, lr=fmt(self.lr), warmup=self.warmup, seed=self.seed)

    @property
    def dir(self) -> str:
        return rooted(RUN_DIR, self.root).format(**self.keys)


@dataclass(frozen=True)
class Evaluation:
    """One extra test pass of a trained run: Task 4 (a longer test gap) or another test split."""

    task: str  # "task4", or the run's own task when only the test split changes
    run: Run
    split: str
    test_gap: float | None = None  # time units; None = the run's own test condition

    @property
    def skipped(self) -> bool:
        return self.run.skipped

    @property
    def dir(self) -> str:
        if self.task == GAP_TASK:
            return rooted(GAP_EVAL_DIR, self.run.root).format(**self.run.keys, split=self.split, gap=fmt(self.test_gap))
        return rooted(SPLIT_EVAL_DIR, self.run.root).format(**self.run.keys, split=self.split)


@dataclass
class Plan:
    runs: list[Run]  # skipped ones included (they appear in the results table as "skipped")
    evaluations: list[Evaluation]
    datasets: list[tuple[int, int, str]]  # (amb, seed, split)
    grammars: list[tuple[int, int]]  # (amb, seed)
    train_split: str
    root: str = DEFAULT_RESULTS_DIR

    def run_metrics(self) -> list[str]:
        return [f"{r.dir}/metrics.json" for r in self.runs if not r.skipped]

    def grammar_summaries(self) -> list[str]:
        return [rooted(GRAMMAR_SUMMARY, self.root).format(amb=amb, seed=seed) for amb, seed in self.grammars]

    def evaluation_metrics(self) -> list[str]:
        return [f"{e.dir}/metrics.json" for e in self.evaluations if not e.skipped]


def task_grid(config: dict, task: str) -> dict | None:
    """The grid of one task, or None when the config leaves the task out."""
    return (config.get("tasks") or {}).get(task)


def plan(config: dict, model_width: Callable[[str, int], int | None] | None = None) -> Plan:
    """Enumerate the grid of a validated config.

    `model_width(arch, feat)` says which sizes an architecture skips (None = skipped, e.g. the
    transformer at 960, spec §10.3); by default it asks the architecture registry.
    """
    if model_width is None:
        model_width = registry_model_width
    archs, seeds = config["architectures"], config["seeds"]
    splits = config["test_splits"]
    root = config.get("results_dir", DEFAULT_RESULTS_DIR)
    train_split = splits[0]
    width_cache: dict[tuple[str, int], bool] = {}

    def skipped(arch: str, feat: int) -> bool:
        if (arch, feat) not in width_cache:
            width_cache[(arch, feat)] = model_width(arch, feat) is None
        return width_cache[(arch, feat)]

    runs = []
    for task in TRAIN_TASKS:
        grid = task_grid(config, task)
        if grid is None:
            continue
        for arch in archs:
            for amb in grid["amb"]:
                for feat in grid["feat"]:
                    for lr in grid["lr"]:
                        for warmup in grid["warmup"]:
                            for seed in seeds:
                                runs.append(Run(task, arch, feat, amb, float(lr), warmup, seed, skipped(arch, feat), root))

    evaluations = []
    gap_grid = task_grid(config, GAP_TASK)
    if gap_grid is not None:
        source = task_grid(config, GAP_SOURCE_TASK)
        for arch in archs:
            for amb in source["amb"]:
                for feat in gap_grid["feat"]:
                    for lr in gap_grid["lr"]:
                        for warmup in gap_grid["warmup"]:
                            for seed in seeds:
                                run = Run(GAP_SOURCE_TASK, arch, feat, amb, float(lr), warmup, seed, skipped(arch, feat), root)
                                for gap in gap_grid["test_gap"]:
                                    for split in splits:
                                        evaluations.append(Evaluation(GAP_TASK, run, split, float(gap)))
    for split in splits[1:]:  # the other test modes of every trained run (made by its train job)
        evaluations += [Evaluation(r.task, r, split) for r in runs]

    datasets = sorted({(r.amb, r.seed, train_split) for r in runs} | {(e.run.amb, e.run.seed, e.split) for e in evaluations})
    grammars = sorted({(amb, seed) for amb, seed, _ in datasets})
    return Plan(runs, evaluations, datasets, grammars, train_split, root)


def registry_model_width(arch: str, feat: int) -> int | None:
    from selectivbench.models.registry import get_mixer

    return get_mixer(arch).model_width(feat)


_loaded_plugins: set[str] = set()


def use_checkout(src: str) -> None:
    """Make every job of the workflow run this checkout's package with this interpreter.

    The rules call `python -m selectivbench ...`; the conda env of envs/ holds the dependencies,
    not the package, so src/ goes on PYTHONPATH. `python` is the interpreter running Snakemake
    unless a conda env (--sdm conda) is activated in front of it. Jobs inherit the environment
    (also on SLURM, where each job re-reads the Snakefile).
    """
    import os
    import sys

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))


def registered_architectures(config: dict) -> list[str]:
    """Architecture names after importing the config's plugins (each at most once per process)."""
    import os

    from selectivbench.models.registry import available, load_plugins

    for plugin in config.get("plugins", []):
        ident = os.path.abspath(plugin) if plugin.endswith(".py") or os.sep in plugin else plugin
        if ident not in _loaded_plugins:
            load_plugins([plugin])
            _loaded_plugins.add(ident)
    return available()


# --- figure targets: which part of the grid each figure of spec §13 needs ----------------------


def figure_runs(config: dict, p: Plan) -> dict[str, list]:
    """Runs/evaluations behind each figure target (a run can serve several figures)."""
    out: dict[str, list] = {}
    if task_grid(config, "task1") is not None:
        task1 = [r for r in p.runs if r.task == "task1"]
        out["task1_complexity"] = task1
        top = max(task_grid(config, "task1")["amb"])  # the model-size sweep is the amb-40 slice
        out["task1_model_size"] = [r for r in task1 if r.amb == top]
    if task_grid(config, "task2") is not None:
        out["task2_noise_gaps"] = [r for r in p.runs if r.task == "task2"]
    if task_grid(config, "task3") is not None:
        out["task3_distractors"] = [r for r in p.runs if r.task == "task3"]
    if task_grid(config, GAP_TASK) is not None:
        out["task4_gap_generalization"] = [e for e in p.evaluations if e.task == GAP_TASK]
    return out

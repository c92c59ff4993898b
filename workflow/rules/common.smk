# Config validation, the experiment grid and helpers shared by the rules.
import os
import sys

# the package of this checkout (jobs get it through PYTHONPATH, see grid.use_checkout)
SRC = os.path.normpath(os.path.join(str(workflow.current_basedir), "..", "..", "src"))
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from selectivbench.analysis import plan as grid
from selectivbench.analysis.jobs import set_args, task_settings
from selectivbench.analysis.workflow_config import check

grid.use_checkout(SRC)
CONDA_ENV = "../../envs/selectivbench.yaml"
SCHEMA = os.path.join(
    str(workflow.current_basedir), "..", "schemas", "config.schema.yaml"
)

check(config, SCHEMA, registered=grid.registered_architectures)
PLAN = grid.plan(config)
RESULTS = config["results_dir"]  # every output lives under it (config/README.md)
# from_rows: analyse the metrics.json files present; no job trains or evaluates
FROM_ROWS = config["from_rows"]
EXTRA_SPLITS = config["test_splits"][1:]  # tested in the training job (--also-test)
# the `--set` arguments of the runs of a task and architecture (the rules add their wildcards)
TASK_SET_ARGS = {
    (task, arch): set_args(task_settings(config, task, arch))
    for task in grid.TRAIN_TASKS
    if task in config["tasks"]
    for arch in config["architectures"]
}
GAP_GRID = config["tasks"].get(grid.GAP_TASK, {})
GAP_SET_ARGS = {
    arch: set_args(
        {**GAP_GRID.get("set", {}), **GAP_GRID.get("arch_set", {}).get(arch, {})}
    )
    for arch in config["architectures"]
}


def path(template):
    """A path (template) of the default output tree, under this config's results_dir."""
    return grid.rooted(template, RESULTS)


SEED_RANK = {str(seed): i for i, seed in enumerate(config["seeds"])}


def task_value(key, task, wildcards, default):
    """tasks.<task>.<key> of a job: one value, or {default: ..., <arch>: ...} per architecture."""
    value = config["tasks"].get(task or wildcards.task, {}).get(key)
    if isinstance(value, dict):
        value = value.get(wildcards.arch, value.get("default"))
    return default if value is None else value


def job_priority(task):
    """Priority of a job of `task`: tasks.<task>.priority; with seed_major, earlier seeds first."""

    def priority(wildcards):
        base = task_value("priority", task, wildcards, 0)
        if not config["seed_major"]:
            return base
        return base + 1_000_000 * (len(SEED_RANK) - 1 - SEED_RANK[wildcards.seed])

    return priority


def gpu_mem(kind, task=None):
    """The resource `gpu_mem_mb` of a job: tasks.<task>.gpu_mem (per architecture), else resources."""

    def mem(wildcards):
        declared = task_value("gpu_mem", task, wildcards, None)
        return config["resources"][kind]["gpu_mem_mb"] if declared is None else declared

    return mem


wildcard_constraints:
    **grid.WILDCARD_CONSTRAINTS,


def retries(kind):
    return config["resources"][kind]["retries"]


def per_attempt(kind, key):
    """A resource that grows with the attempt: a retried job asks for more."""
    base = config["resources"][kind][key]
    return lambda wildcards, attempt: base * attempt


def figure_output(name, subcategory):
    """PDF + PNG of a figure; the PNG goes into the report with its caption."""
    return dict(
        pdf=path(f"results/figures/{name}.pdf"),
        png=report(
            path(f"results/figures/{name}.png"),
            caption=f"../report/{name}.rst",
            category="Figures",
            subcategory=subcategory,
        ),
    )


def table_output(name):
    return dict(
        csv=path(f"results/tables/{name}.csv"),
        md=path(f"results/tables/{name}.md"),
        html=report(
            path(f"results/tables/{name}.html"),
            caption=f"../report/{name}.rst",
            category="Tables",
        ),
    )


def also_test_args():
    """`--also-test DATASET OUT` for every extra test split (shell text with placeholders)."""
    return "".join(
        f" --also-test $(dirname {{input.data_{s}}}) $(dirname {{output.test_{s}}})"
        for s in EXTRA_SPLITS
    )


def final_targets():
    figures = ["task_illustration", "training_curves"]
    figures += list(grid.figure_runs(config, PLAN))
    tables = ["taxonomy", "parameter_counts", "selection", "grammars", "claims"]
    return (
        [
            path(f"results/figures/{name}.{ext}")
            for name in figures
            for ext in ("pdf", "png")
        ]
        + [
            path(f"results/tables/{name}.{ext}")
            for name in tables
            for ext in ("csv", "md")
        ]
        + [path("results/runs.parquet"), path("results/runs.csv")]
    )


def finished(files):
    """from_rows: only the metrics.json files that exist (the others are `missing` rows)."""
    return [f for f in files if os.path.exists(f)] if FROM_ROWS else files

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
EXTRA_SPLITS = config["test_splits"][1:]  # tested in the training job (--also-test)
# the `--set` arguments shared by all runs of a task (the rules add their wildcards)
TASK_SET_ARGS = {
    task: set_args(task_settings(config, task))
    for task in grid.TRAIN_TASKS
    if task in config["tasks"]
}
GAP_SET_ARGS = set_args(config["tasks"].get("task4", {}).get("set", {}))


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
        pdf=f"results/figures/{name}.pdf",
        png=report(
            f"results/figures/{name}.png",
            caption=f"../report/{name}.rst",
            category="Figures",
            subcategory=subcategory,
        ),
    )


def table_output(name):
    return dict(
        csv=f"results/tables/{name}.csv",
        md=f"results/tables/{name}.md",
        html=report(
            f"results/tables/{name}.html",
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
    tables = ["taxonomy", "parameter_counts", "selection", "grammars"]
    return (
        [f"results/figures/{name}.{ext}" for name in figures for ext in ("pdf", "png")]
        + [f"results/tables/{name}.{ext}" for name in tables for ext in ("csv", "md")]
        + ["results/runs.parquet", "results/runs.csv"]
    )

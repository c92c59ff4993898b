# Config validation, the experiment grid and helpers shared by the rules.
import os
import sys

# Jobs run `python -m selectivbench` from this checkout, also inside the conda env of envs/
# (which holds the dependencies, not the package): put src/ on the path of every job.
SRC = os.path.normpath(os.path.join(str(workflow.current_basedir), "..", "..", "src"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH")) if p
)
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# `python` in the rules is this interpreter, unless a conda env (--sdm conda) comes first.
os.environ["PATH"] = os.pathsep.join(
    (os.path.dirname(sys.executable), os.environ.get("PATH", ""))
)

from selectivbench.analysis import plan as grid
from selectivbench.analysis.jobs import set_args, task_settings
from selectivbench.analysis.workflow_config import check

CONDA_ENV = "../../envs/selectivbench.yaml"
SCHEMA = os.path.join(str(workflow.current_basedir), "..", "schemas", "config.schema.yaml")

check(config, SCHEMA, registered=grid.registered_architectures)
PLAN = grid.plan(config)
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


def figure_files(name):
    return [f"results/figures/{name}.pdf", f"results/figures/{name}.png"]


def final_targets():
    figures = ["task_illustration", "training_curves"]
    figures += list(grid.figure_runs(config, PLAN))
    tables = ["taxonomy", "parameter_counts", "selection", "grammars"]
    return (
        [f for name in figures for f in figure_files(name)]
        + [f"results/tables/{name}.{ext}" for name in tables for ext in ("csv", "md")]
        + ["results/runs.parquet", "results/runs.csv"]
    )

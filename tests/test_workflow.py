"""The Snakemake workflow: the quick plan, config errors, lint/format, and the job runner.

Slower checks live in test_workflow_paper.py (the paper DAG) and test_workflow_e2e.py (a full run
with a toy architecture and the report in headless Chromium). Workflow runs happen in a temporary
working directory (`--directory`), so the repository's results/ is never touched.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selectivbench.analysis import jobs

ROOT = Path(__file__).resolve().parents[1]
QUICK = yaml.safe_load((ROOT / "config/config.yaml").read_text())
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snakemake(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run."""
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_quick_config_plans_every_architecture_and_task(tmp_path):
    out = snakemake("-n", "--quiet", "rules", "--configfile", ROOT / "config/config.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    archs, t1 = QUICK["architectures"], QUICK["tasks"]["task1"]
    per_arch = len(t1["amb"]) * len(t1["feat"]) + sum(len(QUICK["tasks"][t]["feat"]) for t in ("task2", "task3"))
    assert counts["train_run"] == len(archs) * per_arch * len(QUICK["seeds"])
    assert counts["evaluate_gap_generalization"] == len(archs) * len(QUICK["tasks"]["task4"]["test_gap"]) * len(QUICK["test_splits"])
    figures = [r for r in counts if r.startswith("draw_")]
    assert len(figures) == 7 and counts["aggregate_runs"] == counts["select_hyperparameters"] == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["tasks"]["task1"].update(lr=["5e-4"]), "config key 'tasks.task1.lr[0]': '5e-4' is not of type 'number'"),
        (lambda c: c.update(architectures=["gla", "mamba3"]), "config key 'architectures[1]': unknown architecture 'mamba3'"),
        (lambda c: c["train"].update(batch_size=0), "config key 'train': config key 'batch_size' must be >= 1"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    config = copy.deepcopy(QUICK)
    edit(config)
    out = snakemake("--cores", 1, "--configfile", write_config(tmp_path / "bad.yaml", config), cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_lint_and_format(tmp_path):
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    snakefmt = shutil.which("snakefmt", path=os.path.dirname(sys.executable)) or shutil.which("snakefmt")
    fmt = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stderr


# --- the job runner: what a failure leaves behind -------------------------------------------------

COMMAND = """
import os, sys
def cli_main(argv):
    out = argv[argv.index("--out") + 1]
    mode = open(os.path.join(out, "mode")).read()
    if mode == "crash":
        raise RuntimeError("CUDA out of memory (simulated)")
    if mode == "interrupted":
        return 75
    if mode == "bad":
        print("error: config key 'lr' must be > 0", file=sys.stderr)
        return 2
    open(os.path.join(out, "metrics.json"), "w").write('{"status": "completed"}')
    return 0
"""


@pytest.fixture
def command(tmp_path, monkeypatch):
    """A command module with cli_main, as selectivbench.train has, whose outcome a file decides."""
    (tmp_path / "fake_command.py").write_text(COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    return out


@pytest.mark.parametrize("mode, codes, recorded", [
    ("crash", [1, 0], True),  # retried once, the second failure is recorded and the job succeeds
    ("interrupted", [75, 75], False),  # preemption: never recorded, the rerun resumes
    ("bad", [2, 2], False),  # bad input: fails loudly
])
def test_job_runner_records_only_the_last_genuine_failure(command, mode, codes, recorded):
    (command / "mode").write_text(mode)
    metrics = str(command / "metrics.json")
    got = [jobs.run_job("fake_command", ["--out", str(command)], metrics, attempts=2) for _ in codes]
    assert got == codes
    assert os.path.exists(metrics) == recorded
    if recorded:
        m = json.loads(Path(metrics).read_text())
        assert m["status"] == "failed" and "CUDA out of memory" in m["error"] and m["failures"] == 2
        assert not (command / "failures.txt").exists()  # a forced rerun gets its attempts again


def test_evaluations_of_a_failed_run_are_recorded_without_running(command, tmp_path):
    (command / "metrics.json").write_text('{"status": "failed", "error": "boom"}')
    out = tmp_path / "eval"
    jobs.test_other_splits(str(command), [(str(tmp_path / "data"), str(out))])
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "failed" and "source run" in m["error"]

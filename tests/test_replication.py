"""The reduced-scale replication (issue 9): chunks on machines that keep nothing, and the
regeneration of tables, figures and claims from the committed rows alone (`from_rows`).

The rows here are synthetic run directories in the format `selectivbench train|evaluate` write
(metrics.json, config.yaml, evals.csv), laid out by the plan of a small config.
"""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selectivbench.analysis import plan as grid
from selectivbench.analysis import replication as R

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ["mamba2", "delta_net", "gated_delta_net", "transformer"]
ACC = {"mamba2": 0.5, "delta_net": 0.3, "gated_delta_net": 0.55, "transformer": 0.8}


def small_config(results_dir="results/replication") -> dict:
    """config/replication.yaml at toy size, complete (under --directory no default config merges in)."""
    config = yaml.safe_load((ROOT / "config/replication.yaml").read_text())
    grid_ = {"feat": [16], "lr": [0.002], "warmup": [1]}
    config.update(
        results_dir=results_dir, architectures=ARCHS, seeds=[1, 2, 3],
        data={"train_size": 48, "val_size": 0, "test_size": 16},
        train={"device": "cpu", "layers": 1, "batch_size": 16, "eval_every": 1, "test_bs": 16, "progress": "off"},
    )
    config["tasks"] = {
        "task1": {**grid_, "amb": [3, 4]}, "task2": {**grid_, "amb": [3]}, "task3": {**grid_, "amb": [3]},
        "task4": {**grid_, "test_gap": [1, 2], "set": {"test_size": 8}},
    }
    return config


def the_plan(config: dict) -> grid.Plan:
    return grid.plan(config, model_width=lambda arch, feat: feat)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def commit_rows(p: grid.Plan, base: Path, skip=()) -> None:
    """The files a finished chunk commits, for every run and evaluation of the plan (dirs in `skip` left out)."""
    for run in p.runs:
        if run.dir in skip:
            continue
        acc = ACC[run.arch] - 0.1 * (run.task == "task2") + 0.01 * run.seed
        d = base / run.dir
        write_json(d / "metrics.json", {"status": "completed", "final_test_acc": acc, "final_test_loss": 1.0, "best_test_acc": acc,
                                        "num_parameters": 1000, "updates": 3, "samples": 48, "device": "NVIDIA H100 80GB HBM3",
                                        "wall_s": 30.0, "dataset": {"grammar": "abc"}})
        (d / "config.yaml").write_text(yaml.safe_dump({"arch": run.arch, "task": run.task, "seed": run.seed}))
        (d / "evals.csv").write_text("eval,update,samples,lr,train_loss,train_acc,test_loss,test_acc,wall_s\n"
                                     f"1,1,16,0.002,2.0,0.1,1.5,{acc / 2},1.0\n3,3,48,0.0,1.0,0.3,1.0,{acc},3.0\n")
        (d / "train.log").write_text("done\n")
    for ev in p.evaluations:
        if ev.dir in skip or ev.run.dir in skip:
            continue
        acc = ACC[ev.run.arch] - (0.05 if ev.split == "heldout" else 0.0) - (0.02 * ev.test_gap if ev.test_gap else 0.0) + 0.01 * ev.run.seed
        write_json(base / ev.dir / "metrics.json", {"test_acc": acc, "test_loss": 1.0, "test_gap": ev.test_gap, "run_status": "completed",
                                                     "device": "NVIDIA H100 80GB HBM3", "wall_s": 5.0})


# --- chunks: prepare, targets, pack --------------------------------------------------------------


def test_prepare_targets_and_pack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = the_plan(small_config())
    gdn2 = next(r for r in p.runs if (r.task, r.arch, r.seed) == ("task2", "gated_delta_net", 2))
    t1 = next(r for r in p.runs if (r.task, r.arch, r.seed, r.amb) == ("task1", "transformer", 1, 4))
    one_gap = next(e for e in p.evaluations if e.run == gdn2 and e.task == "task4" and e.split == "heldout" and e.test_gap == 2)
    commit_rows(p, tmp_path, skip={one_gap.dir, t1.dir})
    # a finished run of this machine still has its checkpoint: its missing tests can be made
    mamba2 = next(r for r in p.runs if (r.task, r.arch, r.seed) == ("task2", "mamba2", 3))
    mamba2_gap = next(e for e in p.evaluations if e.run == mamba2 and e.task == "task4")
    os.remove(Path(mamba2_gap.dir, "metrics.json"))
    Path(mamba2.dir, "checkpoint.pt").write_bytes(b"x")

    reset = R.prepare(p, log=lambda *a: None)
    assert reset == [gdn2]  # its Task-4 test is missing and its checkpoint is gone: train again
    assert not Path(gdn2.dir).exists()
    assert all(not Path(e.dir).exists() for e in p.evaluations if e.run == gdn2)
    gdn2_outputs = [f"{gdn2.dir}/metrics.json"] + [f"{e.dir}/metrics.json" for e in p.evaluations if e.run == gdn2]
    assert sorted(R.missing_targets(p)) == sorted(
        [f"{t1.dir}/metrics.json", f"{grid.Evaluation('task1', t1, 'heldout').dir}/metrics.json",
         f"{mamba2_gap.dir}/metrics.json"] + gdn2_outputs)

    # a training job killed between its metrics.json and its held-out test is not packed
    Path(t1.dir).mkdir(parents=True)
    write_json(Path(t1.dir, "metrics.json"), {"status": "completed", "final_test_acc": 0.5})
    files = R.pack(p, tmp_path / "out/chunk.tar.gz", log=lambda *a: None)
    with tarfile.open(tmp_path / "out/chunk.tar.gz") as tar:
        names = tar.getnames()
    assert len(names) == len(files)
    assert not any(n.endswith("checkpoint.pt") or "/data/" in n for n in names)
    assert f"{t1.dir}/metrics.json" not in names and not any(gdn2.dir in n for n in names)
    assert f"{mamba2.dir}/metrics.json" in names and f"{mamba2.dir}/evals.csv" in names
    assert {"results/replication/runs.csv", "results/replication/runs.parquet"} <= set(names)
    rows = pd.read_csv("results/replication/runs.csv")
    # missing: t1 and its held-out test (metrics.json there but not packed), gdn2's 6 outputs, mamba2's gap
    assert (rows["status"] == "missing").sum() == 2 + len(gdn2_outputs) + 1
    assert rows.loc[rows["path"] == t1.dir, "test_acc"].isna().all()
    curves = pd.read_parquet("results/replication/curves.parquet")
    assert len(curves) == 2 * (len(p.runs) - 2) and not (curves["arch"].eq("transformer") & curves["seed"].eq(1) & curves["amb"].eq(4)
                                                         & curves["task"].eq("task1")).any()
    assert all(n.startswith("results/replication/") for n in names)


# --- the committed rows regenerate tables, figures and claims ------------------------------------


def snakemake(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_from_rows_regenerates_tables_figures_and_claims_without_training(tmp_path):
    config = small_config()
    p = the_plan(config)
    missing = next(r for r in p.runs if (r.task, r.arch, r.seed) == ("task3", "delta_net", 3))
    commit_rows(p, tmp_path, skip={missing.dir})
    (tmp_path / "replication.yaml").write_text(yaml.safe_dump(config))
    args = ["--configfile", tmp_path / "replication.yaml", "--config", "from_rows=true", "--cores", 2]

    plan_ = snakemake(*args, "-n", "--quiet", "rules", cwd=tmp_path)
    assert plan_.returncode == 0, plan_.stderr[-3000:]
    text = plan_.stdout + plan_.stderr
    assert "train_run" not in text and "evaluate_gap_generalization" not in text and "materialize_dataset" not in text
    assert "judge_claims" in text and "draw_task4_gap_generalization" in text

    run = snakemake(*args, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    out = tmp_path / "results/replication"
    assert not (out / "data").exists() and not list(out.rglob("checkpoint.pt"))
    rows = pd.read_csv(out / "runs.csv")
    assert len(rows) == len(p.runs) + len(p.evaluations)
    assert rows.loc[rows["path"] == missing.dir, "status"].tolist() == ["missing"]
    assert set(rows["status"]) == {"completed", "missing"}
    claims = pd.read_csv(out / "tables/claims.csv")
    verdicts = dict(zip(claims[claims.level == "claim"]["claim"], claims[claims.level == "claim"]["verdict"]))
    # synthetic rows: transformer best by 0.25-0.5, Gated DeltaNet and Mamba-2 above DeltaNet, three seeds
    assert verdicts["c"] == "reproduced" and verdicts["a"] == "reproduced"
    assert "## Claims" in (out / "tables/claims.md").read_text()
    figures = sorted(f.name for f in (out / "figures").glob("*.png"))
    assert figures == sorted(f"{n}.png" for n in ["task_illustration", "training_curves", "task1_complexity", "task1_model_size",
                                                   "task2_noise_gaps", "task3_distractors", "task4_gap_generalization"])
    # done: a second call finds nothing to do
    again = snakemake(*args, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr


# --- the config keys the replication added -------------------------------------------------------


SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")


def checked(config: dict) -> dict:
    from selectivbench.analysis.workflow_config import check

    return check(config, SCHEMA, registered=grid.registered_architectures)


def test_replication_config_is_valid_and_complete():
    config = checked(yaml.safe_load((ROOT / "config/replication.yaml").read_text()))
    assert config["results_dir"] == "results/replication" and config["seed_major"] and not config["from_rows"]
    assert len(config["architectures"]) == 7 and set(config["tasks"]) == {"task1", "task2", "task3", "task4"}
    # every key of the quick config is set, so nothing of it leaks in when Snakemake merges them
    quick = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for key, value in quick.items():
        assert key in config, key
        if isinstance(value, dict) and key in ("train", "data", "tasks"):
            assert set(value) <= set(yaml.safe_load((ROOT / "config/replication.yaml").read_text())[key]), key


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"]["task2"]["arch_set"].update(mambaa={"micro_batch": 8}), "'tasks.task2.arch_set.mambaa': 'mambaa' is no registered"),
    (lambda c: c["tasks"]["task2"]["arch_set"].update(mamba={"dataset_size": 10**6}), "must be an integer in 1..data.train_size"),
    (lambda c: c["tasks"]["task4"]["set"].update(test_size=501), "must be an integer in 1..data.test_size (500)"),
    (lambda c: c["tasks"]["task4"]["set"].update(dropout=0.1), "Task 4 only tests a trained run"),
    (lambda c: c["train"].update(dataset_size=100), "'train.dataset_size': set by the workflow"),
    (lambda c: c["tasks"]["task1"]["set"].update(micro_batch=0), "tasks.task1.set"),
    (lambda c: c["tasks"]["task3"].update(gpu_mem={"default": -1}), "tasks.task3.gpu_mem"),
    (lambda c: c.update(from_rows="maybe"), "'from_rows'"),
])
def test_bad_replication_keys_are_named(edit, message):
    from selectivbench.analysis.workflow_config import ConfigError

    config = yaml.safe_load((ROOT / "config/replication.yaml").read_text())
    edit(config)
    with pytest.raises(ConfigError) as err:
        checked(config)
    assert message in str(err.value)


def test_command_line_booleans_and_task_settings():
    from selectivbench.analysis.jobs import task_settings

    config = yaml.safe_load((ROOT / "config/replication.yaml").read_text())
    config["from_rows"] = "true"  # what `--config from_rows=true` gives
    config = checked(config)
    assert config["from_rows"] is True
    mamba, gla = task_settings(config, "task2", "mamba"), task_settings(config, "task2", "gla")
    assert mamba["dataset_size"] == 3200 and gla["dataset_size"] == config["data"]["train_size"] == 10000
    assert mamba["micro_batch"] == gla["micro_batch"] == 32
    gdp = task_settings(config, "task2", "gated_delta_product")  # one arch's override, merged over the task's
    assert gdp["micro_batch"] == 64 and gdp["recompute"] is True and "recompute" not in gla


def test_results_dir_moves_the_whole_tree():
    assert grid.rooted("results/runs/x", "results/replication") == "results/replication/runs/x"
    assert grid.rooted("logs/train_run/x.log", "results/replication") == "results/replication/logs/train_run/x.log"
    assert grid.rooted("results/runs/x") == "results/runs/x" and grid.rooted("logs/a.log") == "logs/a.log"
    p = the_plan(small_config())
    assert all(r.dir.startswith("results/replication/runs/") for r in p.runs)
    assert all(e.dir.startswith("results/replication/evals/") for e in p.evaluations)
    assert p.grammar_summaries()[0].startswith("results/replication/grammars/")
    assert the_plan({**small_config(), "results_dir": "results"}).runs[0].dir.startswith("results/runs/")

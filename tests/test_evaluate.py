"""`selectivbench evaluate` (Task 4): a trained run tested under another test condition."""

import json
from pathlib import Path

import pytest

from selectivbench import evaluate as E
from selectivbench import train as T

TOY = str(Path(__file__).resolve().parent / "toy_arch.py")
COMMON = {
    "arch": "toy_ema", "plugins": f"[{TOY}]", "feat_size": "16", "layers": "2", "batch_size": "8",
    "test_size": "16", "test_bs": "8", "warmup": "2", "lr": "1e-2", "progress": "off", "device": "cpu",
}


def sets(d):
    return [a for k, v in d.items() for a in ("--set", f"{k}={v}")]


def make_dataset(root: Path, seed: int, split: str = "faithful", size: int = 64) -> Path:
    from selectivbench.dataset import cli_main as dataset_main

    out = root / f"{split}_size{size}_amb4_seed{seed}"
    assert dataset_main(["--amb", "4", "--seed", str(seed), "--size", str(size), "--test-size", "16", "--test-split", split,
                         "--workers", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), 1)


@pytest.fixture(scope="module")
def task1_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "task1"
    assert T.cli_main(["--dataset", str(dataset), "--out", str(out), *sets({**COMMON, "dataset_size": "48", "eval_every": "3"})]) == 0
    return out


@pytest.fixture(scope="module")
def task2_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "task2"
    over = {**COMMON, "task": "task2", "dataset_size": "16", "eval_every": "2", "test_size": "8"}
    assert T.cli_main(["--dataset", str(dataset), "--out", str(out), *sets(over)]) == 0
    return out


def evaluate(run, dataset, out, **over) -> int:
    return E.cli_main(["--run", str(run), "--dataset", str(dataset), "--out", str(out), *sets(over)])


def test_same_condition_reproduces_the_final_evaluation(task1_run, dataset, tmp_path):
    # Task 1 inputs have no randomness, and the last evaluation is at the last update (6 = 2 x 3)
    assert evaluate(task1_run, dataset, tmp_path / "same") == 0
    got = json.loads((tmp_path / "same" / "metrics.json").read_text())
    run = json.loads((task1_run / "metrics.json").read_text())
    assert got["test_acc"] == run["final_test_acc"] and got["test_loss"] == pytest.approx(run["final_test_loss"], rel=1e-6)
    assert got["test_max_len"] == 400 and got["checkpoint_update"] == 6 and got["run_config_hash"] == run["config_hash"]


@pytest.mark.parametrize("test_gap, length", [(1, 2200), (2, 4200)])
def test_task4_longer_test_gaps(task2_run, dataset, tmp_path, test_gap, length):
    out = tmp_path / f"gap{test_gap}"
    assert evaluate(task2_run, dataset, out, test_gap=test_gap) == 0
    got = json.loads((out / "metrics.json").read_text())
    assert got["test_gap"] == test_gap and got["test_max_len"] == length and got["noise"] == 0.2
    assert 0 <= got["test_acc"] <= 1 and got["test_size"] == 8 and got["task"] == "task2"


def test_training_keys_cannot_change(task1_run, dataset, tmp_path, capsys):
    assert evaluate(task1_run, dataset, tmp_path / "x", lr="1e-4") == 2
    err = capsys.readouterr().err
    assert "'lr' is fixed by the trained run" in err and "test_gap" in err
    assert evaluate(task1_run, dataset, tmp_path / "x", test_gapp="1") == 2
    assert "did you mean 'test_gap'" in capsys.readouterr().err


def test_other_dataset_and_unfinished_run_are_refused(task1_run, dataset, tmp_path, capsys):
    other = make_dataset(tmp_path, 2)
    assert evaluate(task1_run, other, tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "does not hold the training samples" in err and "seed: 1 -> 2" in err and "grammar_seed: 1 -> 2" in err
    assert evaluate(tmp_path / "no_run", dataset, tmp_path / "x") == 2
    assert "train it first" in capsys.readouterr().err


def test_heldout_test_mode_needs_only_the_same_training_samples(task1_run, dataset, tmp_path, capsys):
    # the held-out twin of the training dataset: same training samples, test = indices 64..79
    heldout = make_dataset(tmp_path, 1, "heldout")
    assert evaluate(task1_run, heldout, tmp_path / "heldout") == 0
    got = json.loads((tmp_path / "heldout" / "metrics.json").read_text())
    faithful = json.loads((task1_run / "metrics.json").read_text())
    assert got["test_split"] == "heldout" and got["test_indices"] == [64, 80] and 0 <= got["test_acc"] <= 1
    assert got["test_acc"] != faithful["final_test_acc"]  # other samples (the faithful ones were trained on)
    # another training size is another training identity, whatever the split: refused, key named
    assert evaluate(task1_run, make_dataset(tmp_path, 1, "heldout", size=48), tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "differing dataset keys" in err and "size: 64 -> 48" in err and "train_samples: 64 -> 48" in err
    assert "test_split" not in err


def test_checkpoint_of_an_older_version_is_matched_through_its_hash(task1_run, dataset, tmp_path, capsys):
    """Checkpoints written before the per-key training identity hold only the dataset's config hash."""
    import shutil

    import torch

    old = tmp_path / "old_run"
    shutil.copytree(task1_run, old)
    ckpt = torch.load(old / "checkpoint.pt", map_location="cpu", weights_only=False)
    del ckpt["dataset"]["train_config"]
    torch.save(ckpt, old / "checkpoint.pt")
    assert evaluate(old, make_dataset(tmp_path, 1, "heldout"), tmp_path / "heldout") == 0
    assert evaluate(old, make_dataset(tmp_path, 1, "faithful", size=48), tmp_path / "x") == 2
    assert "matches no test split of this training config" in capsys.readouterr().err

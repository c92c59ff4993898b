"""One training run (spec §11): files, determinism, resume after SIGTERM/SIGKILL, divergence, bad input.

Runs use the `toy_ema` plugin (tests/toy_arch.py) at feat 16 on an amb-4 dataset, so each run
takes about a second on one CPU core. Resume tests run `selectivbench train` in subprocesses and
send real signals.
"""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selectivbench import train as T
from selectivbench.runio import load_plugins_once

TESTS = Path(__file__).resolve().parent
TOY = str(TESTS / "toy_arch.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMING_KEYS = {"wall_s", "train_s", "updates_per_s", "tokens_per_s", "peak_memory_bytes", "sessions", "device"}

# 24 updates of 8 samples; evaluations every 4 updates on 16 test samples
BASE = {
    "arch": "toy_ema", "plugins": f"[{TOY}]", "feat_size": "16", "layers": "2", "batch_size": "8",
    "dataset_size": "192", "eval_every": "4", "test_size": "16", "test_bs": "8", "warmup": "3", "lr": "1e-2",
    "progress": "off", "seed": "1", "device": "cpu",
}


# the resume tests: dropout stays on (the RNG matters); validation on samples 192..287 of the
# training stream, of which the dataset file holds 192..255 and the rest is sampled by index range
RESUME = dict(dropout_quirk="false", checkpoint_every="2", val_size="96")


def set_args(**over):
    args = []
    for k, v in {**BASE, **over}.items():
        args += ["--set", f"{k}={v}"]
    return args


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from selectivbench.dataset import cli_main as dataset_main

    out = tmp_path_factory.mktemp("data") / "amb4_seed1"
    assert dataset_main(["--amb", "4", "--seed", "1", "--size", "256", "--test-size", "32", "--workers", "1", "--out", str(out)]) == 0
    return out


def train_in_process(dataset, out, **over) -> int:
    return T.cli_main(["--dataset", str(dataset), "--out", str(out), *set_args(**over)])


def train_subprocess(dataset, out, **over) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "selectivbench", "train", "--dataset", str(dataset), "--out", str(out), *set_args(**over)]
    return subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def wait_for_line(proc, needle: str, timeout: float = 120) -> list[str]:
    lines, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(lines)}")


def finish(proc, timeout: float = 300) -> tuple[int, str]:
    err = proc.stderr.read()
    return proc.wait(timeout), err


def result(run: Path) -> tuple[dict, list[dict], dict]:
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "evals.csv") as f:
        evals = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    weights = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}, evals, weights


def assert_same_run(a: Path, b: Path) -> None:
    ma, ea, wa = result(a)
    mb, eb, wb = result(b)
    ma["dataset"].pop("path"), mb["dataset"].pop("path")
    assert ma == mb
    assert ea == eb
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory):
    """The uninterrupted run the resume tests compare with (dropout stays on: the RNG matters)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    proc = train_subprocess(dataset, out, **RESUME)
    rc, err = finish(proc)
    assert rc == 0, err
    return out


def test_lr_schedule_matches_lambdalr():
    warmup, total = 5, 20
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2.0)
    ref = lambda s: s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ref)
    for u in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * T.lr_factor(u, warmup, total), abs=1e-12)
        opt.step()
        sched.step()
    assert T.lr_factor(0, warmup, total) == 0.0 and T.lr_factor(warmup, warmup, total) == 1.0
    assert T.lr_factor(total, warmup, total) == pytest.approx(0.0)


def test_toy_plugin_chunked_kernel_matches_naive_recurrence():
    load_plugins_once([TOY])
    from selectivbench.models import RecNet

    torch.manual_seed(0)
    model = RecNet("toy_ema", 16, vocab=5, num_classes=17, n_layers=2).eval()
    x = torch.randn(2, 45, 5)
    fast = model(x)
    model.set_mode("naive")
    torch.testing.assert_close(model(x), fast, rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_averages_micro_batches(dataset):
    """Two micro-batches of 4 give the gradient of one batch of 8 (Task 1: equal lengths)."""
    from selectivbench.dataset import load_dataset
    from selectivbench.inputs import InputSpec, make_batch

    load_plugins_once([TOY])
    from selectivbench.models import RecNet

    ds = load_dataset(dataset)
    spec = InputSpec()  # Task 1
    grads = []
    for n_micro in (1, 2):
        torch.manual_seed(0)
        model = RecNet("toy_ema", 16, ds.grammar.vocab, ds.grammar.num_classes, n_layers=2, dropout=0.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, inspect the gradient
        size = 8 // n_micro
        batches = iter([make_batch(ds.train[i : i + size], range(i, i + size), ds.grammar, spec, "train", 1) for i in range(0, 8, size)])
        captured = {}
        opt.step = lambda: captured.update({n: p.grad.clone() for n, p in model.named_parameters()})  # read grads before zeroing
        out = T.train_update(model, opt, batches, n_micro, 0.0, 1e9, torch.device("cpu"), torch.float32)
        assert out["finite"] and out["steps"] == 8 * 400
        grads.append(captured)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-7)


def test_run_directory_contents_and_determinism(dataset, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_in_process(dataset, a) == 0
    assert train_in_process(dataset, b) == 0
    for name in ("config.yaml", "evals.csv", "metrics.json", "checkpoint.pt", "train.log"):
        assert (a / name).is_file(), name
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["updates"] == 24 and metrics["evaluations"] == 6
    assert metrics["samples"] == 192 and metrics["total_updates"] == 24 and metrics["grad_accum"] == 1
    assert metrics["num_parameters"] > 0 and metrics["state_size_per_layer"] == 16 and metrics["tokens_per_s"] > 0
    with open(a / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["update"]) for r in rows] == [4, 8, 12, 16, 20, 24]
    assert metrics["final_test_acc"] == float(rows[-1]["test_acc"])
    assert metrics["best_test_acc"] == max(float(r["test_acc"]) for r in rows)
    # the lr logged with an evaluation is the one of the update just before it
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-2 * T.lr_factor(u - 1, 3, 24) for u in (4, 8, 12, 16, 20, 24)])
    assert 0 < metrics["final_test_acc"] <= 1 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert_same_run(a, b)  # same config and seed twice: identical
    stored = (a / "config.yaml").read_text()
    assert f"config_hash: {metrics['config_hash']}" in stored and "arch: toy_ema" in stored


def test_finished_run_is_not_redone_and_other_config_is_refused(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2") == 0
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2", checkpoint_every="5") == 0  # operational key: same run
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2", lr="5e-4") == 2
    assert "lr: 0.01 -> 0.0005" in capsys.readouterr().err


def test_run_of_a_version_without_a_new_key_is_kept_at_its_default(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2") == 0
    config = out / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(True) if not line.startswith("val_size:")))
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2") == 0  # val_size 0 = the old behaviour
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2", val_size="8") == 2
    assert "val_size: '<missing>' -> 8" in capsys.readouterr().err


def test_dropout_quirk_leaves_model_in_eval_mode(dataset, tmp_path):
    for quirk in (True, False):
        out = tmp_path / f"quirk{quirk}"
        assert train_in_process(dataset, out, dataset_size="32", eval_every="2", dropout_quirk=str(quirk)) == 0
        ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        assert ckpt["model_training"] is (not quirk)


def test_divergence_is_recorded_and_exits_zero(dataset, tmp_path):
    out = tmp_path / "nan"
    assert train_in_process(dataset, out, lr="1e30", warmup="0", eval_every="100") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert metrics["diverged_at_update"] == 2 and metrics["updates"] == 1  # update 1 makes the weights ~1e30
    assert metrics["final_test_acc"] is None and metrics["evaluations"] == 0


def test_sigterm_then_resume_is_bit_identical(dataset, tmp_path, reference_run, capsys):
    out = tmp_path / "interrupted"
    proc = train_subprocess(dataset, out, **RESUME)
    wait_for_line(proc, "checkpoint written at update 2")
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 75, err
    assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").is_file()
    stopped_at = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["progress"]["update"]
    assert 2 <= stopped_at < 24, err

    # a checkpoint written for another config is refused, naming the keys
    capsys.readouterr()
    assert train_in_process(dataset, out, **RESUME, lr="2e-3", layers="3") == 2
    err = capsys.readouterr().err
    assert "was written for another config" in err and "layers: 2 -> 3" in err and "lr: 0.01 -> 0.002" in err

    rc, err = finish(train_subprocess(dataset, out, **RESUME))
    assert rc == 0, err
    assert f"resuming at update {stopped_at}" in err
    assert_same_run(out, reference_run)  # val_acc and val_loss included
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sessions"] == 2 and metrics["val_indices"] == [192, 288] and metrics["val_update"] == 24
    assert 0 < metrics["val_acc"] <= 1 and metrics["val_loss"] > 0


def test_sigkill_then_resume_is_bit_identical(dataset, tmp_path, reference_run):
    out = tmp_path / "killed"
    proc = train_subprocess(dataset, out, **RESUME)
    wait_for_line(proc, "checkpoint written at update 6")
    proc.kill()
    proc.wait(60)
    proc.stderr.close()
    assert not (out / "metrics.json").exists()
    rc, err = finish(train_subprocess(dataset, out, **RESUME))
    assert rc == 0, err
    assert "resuming at update" in err
    assert_same_run(out, reference_run)


def test_recompute_replays_dropout_and_may_change_on_resume(dataset, tmp_path, reference_run):
    """`recompute` is operational: a session with activation recomputation (same dropout masks
    replayed), killed and resumed without it, is the reference run bit for bit."""
    out = tmp_path / "recompute"
    proc = train_subprocess(dataset, out, **RESUME, recompute="true")
    lines = wait_for_line(proc, "checkpoint written at update 6")
    assert any("| recompute on |" in line for line in lines), "".join(lines)
    proc.kill()
    proc.wait(60)
    proc.stderr.close()
    rc, err = finish(train_subprocess(dataset, out, **RESUME, recompute="false"))
    assert rc == 0, err
    assert "resuming at update" in err and "| recompute off |" in err
    assert_same_run(out, reference_run)
    assert json.loads((out / "metrics.json").read_text())["recompute"] is False


def test_compiled_training_with_length_buckets_matches_eager(dataset, tmp_path):
    """`compile: true` trains the same run (operational key: same config hash): the compiled model
    shares the eager model's parameters, and the batches padded to multiples of length_bucket
    only add masked steps after the valid ones. Dropout off: inductor draws its own masks."""
    eager, comp = tmp_path / "eager", tmp_path / "compiled"
    assert train_in_process(dataset, eager, dropout="0.0", max_updates="6", layers="1") == 0
    assert train_in_process(dataset, comp, dropout="0.0", max_updates="6", layers="1", compile="true", length_bucket="64") == 0
    assert "| compile on (lengths padded to multiples of 64) |" in (comp / "train.log").read_text()
    me, ee, we = result(eager)
    mc, ec, wc = result(comp)
    assert mc["compile"] is True and me["compile"] is False and mc["config_hash"] == me["config_hash"]
    for key in ("final_test_acc", "final_test_loss"):
        assert mc[key] == pytest.approx(me[key], rel=1e-4, abs=1e-5), key
    assert [float(r["train_loss"]) for r in ec] == pytest.approx([float(r["train_loss"]) for r in ee], rel=1e-4)
    for k in we:
        torch.testing.assert_close(wc[k], we[k], rtol=1e-4, atol=1e-5, msg=k)


def test_validation_uses_the_untrained_samples_after_the_training_range(dataset, tmp_path, capsys):
    from selectivbench import config as C
    from selectivbench.dataset import load_dataset, materialize
    from selectivbench.evaluate import run_test
    from selectivbench.inputs import InputSpec
    from selectivbench.runio import build_model
    from selectivbench.sampling import sample_classes

    out = tmp_path / "val"
    assert train_in_process(dataset, out, dataset_size="32", eval_every="2", val_size="240") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_indices"] == [32, 272] and metrics["val_update"] == 4
    # the same pass by hand: rows 32..255 of classes.npy + samples 256..271 drawn by index, test condition
    ds = load_dataset(dataset)
    classes = sample_classes(ds.grammar, 1, 32, 272)
    assert (classes[:224] == ds.train[32:]).all()
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = C.resolve({**BASE, "dataset_size": "32", "eval_every": "2", "val_size": "240"})
    model = build_model(cfg, ds.grammar)
    model.load_state_dict(ckpt["model"])
    got = run_test(model, classes, ds.grammar, InputSpec(), 1, 0, 8, torch.device("cpu"), torch.float32, first_index=32)
    assert (got["test_acc"], got["test_loss"]) == (metrics["val_acc"], pytest.approx(metrics["val_loss"], rel=1e-6))

    # a held-out dataset sized without room for validation: its test samples are the validation ones
    heldout = tmp_path / "heldout"
    materialize(heldout, 4, 1, 32, test_split="heldout", test_size=16, workers=1, progress=False)
    capsys.readouterr()
    assert train_in_process(heldout, tmp_path / "bad", dataset_size="32", val_size="8", test_size="16") == 2
    err = capsys.readouterr().err
    assert "config key 'val_size'" in err and "overlap the dataset's heldout test samples [32, 48)" in err


def test_help_documents_every_key(capsys):
    from selectivbench.config import FIELDS

    with pytest.raises(SystemExit) as exit_:
        T.cli_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in FIELDS:
        assert f"  {name} " in text, name
    assert "[78]" in text and "task2: gap_min=0.1, gap_max=1.0, noise=0.2" in text


@pytest.mark.parametrize(
    "over, message",
    [
        ({"arch": "nope"}, "unknown architecture 'nope'; registered: "),
        ({"lrr": "1"}, "unknown config key 'lrr' (did you mean 'lr'?)"),
        ({"gap_prob": "1.5"}, "gap_prob must be in [0, 1]"),
        ({"feat_size": "big"}, "config key 'feat_size': cannot use 'big'"),
        ({"dataset_size": "100000"}, "'dataset_size' (100000) exceeds the dataset's 256 training samples"),
    ],
)
def test_bad_input_is_named(dataset, tmp_path, capsys, over, message):
    assert train_in_process(dataset, tmp_path / "bad", **over) == 2
    err = capsys.readouterr().err
    assert message in err
    if "unknown architecture" in message:
        assert "toy_ema" in err and "gla" in err


def test_missing_dataset_says_how_to_build_it(tmp_path, capsys):
    assert train_in_process(tmp_path / "nowhere", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "not found" in err and "selectivbench dataset --amb" in err


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_run_uses_bf16_and_probes_the_micro_batch(dataset, tmp_path):
    out = tmp_path / "cuda"
    assert train_in_process(dataset, out, device="cuda", dataset_size="64", eval_every="4") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["precision"] == "bfloat16"
    assert metrics["micro_batch"] == 8 and metrics["peak_memory_bytes"] > 0


@pytest.mark.gpu
@cuda
def test_micro_batch_probe_halves_on_out_of_memory():
    load_plugins_once([TOY])
    from selectivbench.models import RecNet

    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    # the bf16 logits of 64 x 4096 steps alone take 1.5x the free memory; 8 samples fit easily
    classes = int(1.5 * free / (64 * 4096 * 2))
    model = RecNet("toy_ema", 16, vocab=5, num_classes=classes, n_layers=2).to(device)
    rng = torch.cuda.get_rng_state(device)
    micro = T.probe_micro_batch(model, 64, 4096, 5, device, torch.bfloat16)
    assert micro < 64 and 64 % micro == 0
    assert torch.equal(torch.cuda.get_rng_state(device), rng)
    assert all(p.grad is None for p in model.parameters())

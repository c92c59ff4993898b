"""`selectivbench dataset` / materialize() / load_dataset() (spec §5)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from reference_sampler import reference_classes

from selectivbench import dataset as ds_mod
from selectivbench.atomic import atomic_save_npy, file_digest
from selectivbench.dataset import DatasetError, cli_main, count_rows_in, load_dataset, materialize
from selectivbench.sampling import sample_classes


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """amb 20 seed 1, 1200 training samples, faithful test split of 1000, made by the CLI."""
    out = tmp_path_factory.mktemp("ds") / "amb20_seed1"
    assert cli_main(["--amb", "20", "--seed", "1", "--size", "1200", "--workers", "1", "--out", str(out)]) == 0
    return out


def test_cli_writes_a_complete_faithful_dataset(small):
    assert sorted(p.name for p in small.iterdir()) == ["classes.npy", "meta.json", "test_classes.npy", "transitions.txt"]
    meta = json.loads((small / "meta.json").read_text())
    assert meta["fingerprint"] == "7e2e5b700cc2"
    assert hashlib.md5((small / "transitions.txt").read_bytes()).hexdigest()[:12] == meta["fingerprint"]
    train, test = np.load(small / "classes.npy"), np.load(small / "test_classes.npy")
    assert train.dtype == test.dtype == np.uint16 and train.shape == (1200, 200) and test.shape == (1000, 200)
    # faithful: the test sequences are training indices 0..999, exactly as the authors
    assert np.array_equal(test, train[:1000])
    assert meta["test_split"] == "faithful" and meta["test_indices"] == [0, 1000] and meta["test_in_train"] == 1000
    assert meta["train_indices"] == [0, 1200] and meta["config"]["size"] == 1200
    assert np.array_equal(train[[0, 1, 777, 1199]], reference_classes(load_dataset(small).grammar, 1, [0, 1, 777, 1199]))
    for name, entry in meta["files"].items():
        assert file_digest(small / name) == entry["sha256"]
    assert set(meta["timings"]) >= {"grammar_s", "train_s", "test_s", "total_s"}
    assert len(meta["config_hash"]) == 64 and not list(small.glob(".*tmp"))


def test_load_dataset_roundtrip(small):
    d = load_dataset(small)
    assert d.grammar.fingerprint() == d.meta["fingerprint"] and d.grammar.amb == 20
    assert isinstance(d.train, np.memmap) and d.train.shape == (1200, 200)
    assert np.array_equal(d.test, np.load(small / "test_classes.npy"))


def test_start_and_heldout_split(tmp_path, small):
    out = tmp_path / "held"
    meta = materialize(out, 20, 1, 300, start=600, test_split="heldout", test_size=50, workers=1, progress=False)
    d = load_dataset(out)
    full = np.load(small / "classes.npy")
    assert np.array_equal(d.train, full[600:900])  # index ranges are independent of the chunking
    assert meta["test_indices"] == [900, 950] and np.array_equal(d.test, full[900:950])
    assert meta["test_in_train"] == 0
    # faithful test split outside the training range is sampled, still indices 0..test_size-1
    meta = materialize(tmp_path / "faith", 20, 1, 100, start=600, test_size=20, workers=1, progress=False)
    assert meta["test_indices"] == [0, 20] and meta["test_in_train"] == 0
    assert np.array_equal(load_dataset(tmp_path / "faith").test, full[:20])


def test_parallel_materialize_is_identical(tmp_path, small):
    materialize(tmp_path / "par", 20, 1, 1200, workers=2, progress=False)
    assert (tmp_path / "par" / "classes.npy").read_bytes() == (small / "classes.npy").read_bytes()
    assert (tmp_path / "par" / "test_classes.npy").read_bytes() == (small / "test_classes.npy").read_bytes()


def test_count_rows_in():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 400, (500, 200)).astype(np.uint16)
    rows = np.concatenate([table[[3, 3, 499]], rng.integers(0, 400, (4, 200)).astype(np.uint16)])
    assert count_rows_in(rows, table) == 3
    near_miss = table[:1].copy()
    near_miss[0, -1] ^= 1
    assert count_rows_in(near_miss, table) == 0


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "meta.json").unlink(), "meta.json: missing"),
    (lambda d: (d / "transitions.txt").unlink(), "transitions.txt: missing"),
    (lambda d: (d / "classes.npy").write_bytes((d / "classes.npy").read_bytes()[:-400]), "classes.npy: truncated"),
    (lambda d: (d / "test_classes.npy").write_bytes(b"\x00" + (d / "test_classes.npy").read_bytes()[1:]),
     "test_classes.npy: corrupt"),
    (lambda d: (d / "meta.json").write_text("{"), "meta.json: corrupt"),
])
def test_load_names_the_bad_file(small, tmp_path, damage, message):
    d = _copy(small, tmp_path / "copy")
    damage(d)
    with pytest.raises(DatasetError, match=message):
        load_dataset(d)


def test_load_checks_the_grammar_fingerprint(small, tmp_path):
    d = _copy(small, tmp_path / "copy")
    meta = json.loads((d / "meta.json").read_text())
    meta["config"]["seed"] = 2  # the files now claim to come from another grammar
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="fingerprint"):
        load_dataset(d)


@pytest.mark.parametrize("argv,option", [
    (["--amb", "1"], "--amb"), (["--amb", "53"], "--amb"), (["--amb", "x"], "--amb"),
    (["--seed", "0"], "--seed"), (["--seed", "-2"], "--seed"),
    (["--size", "0"], "--size"), (["--size", "-5"], "--size"),
    (["--start", "-1"], "--start"), (["--test-size", "0"], "--test-size"),
    (["--test-split", "random"], "--test-split"), (["--workers", "0"], "--workers"),
    (["--bogus", "1"], "--bogus"), (["--out"], "--out"),
])
def test_bad_input_is_a_one_line_usage_error(tmp_path, capsys, argv, option):
    base = {"--amb": "20", "--seed": "1", "--size": "10", "--out": str(tmp_path / "out")}
    for key in argv:
        base.pop(key, None)
    args = [x for kv in base.items() for x in kv] + argv
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and option in err, err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cli_main(["--amb", "20", "--seed", "1", "--size", "10", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--out" in err


def test_failure_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, small):
    def failing_sampler(*args, **kwargs):
        raise MemoryError("simulated failure while sampling")

    monkeypatch.setattr(ds_mod, "sample_classes", failing_sampler)
    with pytest.raises(MemoryError):
        materialize(tmp_path / "new", 20, 1, 10, workers=1, progress=False)
    assert not (tmp_path / "new").exists()  # a directory this run created is removed again
    # an existing complete dataset that is being regenerated loses its meta.json (no stale "complete")
    d = _copy(small, tmp_path / "existing")
    assert cli_main(["--amb", "20", "--seed", "1", "--size", "10", "--out", str(d)]) == 1
    assert not (d / "meta.json").exists() and not list(d.glob(".*tmp"))
    with pytest.raises(DatasetError, match="meta.json: missing"):
        load_dataset(d)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    with pytest.raises(ValueError):
        atomic_save_npy(tmp_path / "x.npy", np.array([object()]))  # pickling refused mid-write
    assert list(tmp_path.iterdir()) == []


def test_entry_point_subprocess(tmp_path):
    out = tmp_path / "sub"
    ok = subprocess.run([sys.executable, "-m", "selectivbench", "dataset", "--amb", "20", "--seed", "2", "--size", "30",
                         "--test-size", "5", "--workers", "1", "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "fingerprint=b8711499d27d" in ok.stdout  # amb 20 seed 2 (spec §14)
    assert np.array_equal(load_dataset(out).train, sample_classes(load_dataset(out).grammar, 2, 0, 30))
    bad = subprocess.run([sys.executable, "-m", "selectivbench", "dataset", "--amb", "20", "--seed", "0", "--size", "3",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--seed" in bad.stderr
    assert not (tmp_path / "bad").exists()

"""`selectivbench dataset`: materialize one grammar's sequence dataset (spec §5); load_dataset().

Directory layout (every file written atomically, `meta.json` last = the dataset is complete):
  transitions.txt   `SRC, DST, PROB` lines of the grammar; md5[:12] = fingerprint (§14)
  classes.npy       uint16 [size, 200] class ids of training indices start .. start+size-1
  test_classes.npy  uint16 [test_size, 200]; `faithful` = indices 0 .. test_size-1 as the authors
                    (= the first training sequences when start = 0); `heldout` = the indices right
                    after the training range, disjoint from it
  meta.json         configuration, its hash, fingerprint, file hashes, timings, overlap count
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from selectivbench import __version__
from selectivbench.atomic import HASH, atomic_save_npy, atomic_write_json, atomic_write_text, file_digest, json_digest
from selectivbench.grammar import BASE_DENSITY, MAX_AMB, NUM_START_STATES, Grammar, check_grammar_args, generate_grammar
from selectivbench.sampling import COMBINED_LEN, SEQ_LEN_MAX, SEQ_LEN_MIN, default_workers, sample_classes

FORMAT = "selectivbench-dataset/1"
FILES = ("transitions.txt", "classes.npy", "test_classes.npy")
TEST_SPLITS = ("faithful", "heldout")
TEST_KEYS = ("test_split", "test_size")  # choose the test samples; every other config key fixes the training ones


class DatasetError(Exception):
    """A dataset directory is missing, incomplete or corrupt; the message names the file."""


@dataclass
class Dataset:
    grammar: Grammar
    train: np.ndarray  # uint16 [size, 200], memory-mapped
    test: np.ndarray  # uint16 [test_size, 200]
    meta: dict
    path: Path


def dataset_config(amb: int, seed: int, size: int, start: int = 0, test_split: str = "faithful", test_size: int = 1000) -> dict:
    """Everything that determines the content of a dataset directory (validated)."""
    check_grammar_args(amb, seed)
    for name, value, low in (("size", size, 1), ("start", start, 0), ("test_size", test_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if test_split not in TEST_SPLITS:
        raise ValueError(f"test_split must be one of {', '.join(TEST_SPLITS)}, got {test_split!r}")
    return {
        "format": FORMAT,
        "amb": amb,
        "depth": amb,
        "vocab": amb + 1,
        "seed": seed,
        "size": size,
        "start": start,
        "test_split": test_split,
        "test_size": test_size,
        "initial_states": NUM_START_STATES,
        "transition_density": BASE_DENSITY,  # divided by depth inside the generator (§2)
        "seq_len_min": SEQ_LEN_MIN,
        "seq_len_max": SEQ_LEN_MAX,
        "combined_seq_length": COMBINED_LEN,
    }


def training_config(config: dict) -> dict:
    """The training identity of a dataset config: the keys that determine its training samples.

    Two datasets that differ only in TEST_KEYS hold the same training samples, so a run trained
    on one can be tested on the other (`selectivbench evaluate`, held-out test mode).
    """
    return {k: v for k, v in config.items() if k not in TEST_KEYS}


def index_range_of_test(config: dict) -> tuple[int, int]:
    """Half-open range of the test sample indices (§4, §15.4)."""
    if config["test_split"] == "faithful":
        return 0, config["test_size"]
    stop = config["start"] + config["size"]
    return stop, stop + config["test_size"]


def count_rows_in(rows: np.ndarray, table: np.ndarray) -> int:
    """How many rows of `rows` occur (exactly) as a row of `table`."""
    if len(rows) == 0 or len(table) == 0:
        return 0
    table_hash = _row_hashes(table)
    rows_hash = _row_hashes(rows)
    candidates = np.flatnonzero(np.isin(rows_hash, table_hash))
    if len(candidates) == 0:
        return 0
    by_hash: dict[int, list[int]] = {}
    wanted = set(rows_hash[candidates].tolist())
    for i in np.flatnonzero(np.isin(table_hash, list(wanted))):
        by_hash.setdefault(int(table_hash[i]), []).append(int(i))
    return sum(any(np.array_equal(rows[c], table[i]) for i in by_hash[int(rows_hash[c])]) for c in candidates)


def _row_hashes(a: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """A 64-bit hash per row (collisions are settled by exact comparison)."""
    a = np.ascontiguousarray(a)
    words = a.view(np.uint64) if a.shape[1] * a.itemsize % 8 == 0 else a.astype(np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15) ** np.arange(1, words.shape[1] + 1, dtype=np.uint64)  # odd, wraps
    out = np.empty(len(a), dtype=np.uint64)
    for i in range(0, len(a), chunk):
        out[i : i + chunk] = (words[i : i + chunk] * mult).sum(axis=1)
    return out


class OutDirError(Exception):
    """The output directory cannot be created or written."""


def materialize(out: str | os.PathLike, amb: int, seed: int, size: int, start: int = 0, test_split: str = "faithful",
                test_size: int = 1000, workers: int | None = None, progress: bool = True) -> dict:
    """Write the dataset directory `out` (see module doc); returns its meta dict.

    On failure the files this call wrote are removed again and no meta.json exists, so nothing
    left behind looks complete.
    """
    config = dataset_config(amb, seed, size, start, test_split, test_size)
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path(out)
    created_dir = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OutDirError(f"cannot write to output directory {str(out)!r} ({e.strerror or e})") from None
    (out / "meta.json").unlink(missing_ok=True)  # the old dataset, if any, is no longer complete
    written: list[Path] = []
    try:
        meta = _write_dataset(out, config, workers, progress, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return meta


def _write_dataset(out: Path, config: dict, workers: int, progress: bool, written: list[Path]) -> dict:
    timings = {}
    t0 = time.perf_counter()
    grammar = generate_grammar(config["amb"], config["seed"])
    timings["grammar_s"] = time.perf_counter() - t0

    written.append(out / "transitions.txt")
    atomic_write_text(out / "transitions.txt", grammar.transitions_text())

    t = time.perf_counter()
    first, size = config["start"], config["size"]
    train = sample_classes(grammar, config["seed"], first, first + size, workers=workers, progress=progress)
    timings["train_s"] = time.perf_counter() - t
    written.append(out / "classes.npy")
    atomic_save_npy(out / "classes.npy", train)

    t = time.perf_counter()
    a, b = index_range_of_test(config)
    if first <= a and b <= first + size:  # faithful split inside the training range: the same rows
        test = train[a - first : b - first].copy()
    else:
        test = sample_classes(grammar, config["seed"], a, b, workers=workers, progress=progress)
    timings["test_s"] = time.perf_counter() - t
    written.append(out / "test_classes.npy")
    atomic_save_npy(out / "test_classes.npy", test)

    t = time.perf_counter()
    test_in_train = count_rows_in(test, train)
    files = {name: {HASH: file_digest(out / name), "bytes": (out / name).stat().st_size} for name in FILES}
    timings["hash_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    meta = {
        "config": config,
        "config_hash": json_digest(config),
        "fingerprint": grammar.fingerprint(),
        "num_classes": grammar.num_classes,
        "start_states": grammar.start_states,
        "grammar_attempts": grammar.attempts,
        "train_indices": [first, first + size],  # half-open range
        "test_indices": [a, b],
        "test_split": config["test_split"],
        "test_in_train": test_in_train,  # test rows that also occur (exactly) as training rows
        "files": files,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "workers": workers,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"selectivbench": __version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    written.append(out / "meta.json")
    atomic_write_json(out / "meta.json", meta)
    return meta


def load_dataset(path: str | os.PathLike, verify: bool = True) -> Dataset:
    """Open a dataset directory; with `verify`, check every file's size and content hash."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset directory {str(path)!r} does not exist")
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DatasetError(f"{meta_path}: missing (dataset generation did not finish)")
    try:
        meta = json.loads(meta_path.read_text())
        config, files = meta["config"], meta["files"]
    except (ValueError, KeyError) as e:
        raise DatasetError(f"{meta_path}: corrupt ({e})") from None
    if config.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: unknown format {config.get('format')!r}, expected {FORMAT!r}")
    for name in FILES:
        file = path / name
        if not file.exists():
            raise DatasetError(f"{file}: missing")
        size, expected = file.stat().st_size, files[name]["bytes"]
        if size != expected:
            what = "truncated" if size < expected else "corrupt"
            raise DatasetError(f"{file}: {what} ({size} bytes, meta.json says {expected})")
        if verify and file_digest(file) != files[name][HASH]:
            raise DatasetError(f"{file}: corrupt (content hash differs from meta.json)")

    grammar = generate_grammar(config["amb"], config["seed"])
    if grammar.fingerprint() != meta["fingerprint"]:
        raise DatasetError(f"{meta_path}: grammar fingerprint {meta['fingerprint']} differs from the regenerated "
                           f"grammar's {grammar.fingerprint()} (amb={config['amb']}, seed={config['seed']})")
    train = _load_classes(path / "classes.npy", config["size"], mmap=True)
    test = _load_classes(path / "test_classes.npy", config["test_size"], mmap=False)
    return Dataset(grammar, train, test, meta, path)


def _load_classes(file: Path, rows: int, mmap: bool) -> np.ndarray:
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(f"{file}: corrupt ({e})") from None
    if array.dtype != np.uint16 or array.shape != (rows, COMBINED_LEN):
        raise DatasetError(f"{file}: corrupt (dtype {array.dtype} shape {array.shape}, expected uint16 {(rows, COMBINED_LEN)})")
    return array


# ---------------------------------------------------------------- command line


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump; cli_main turns it into exit code 2
        raise UsageError(message)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _amb(text: str) -> int:
    value = _int_at_least(2)(text)
    if value > MAX_AMB:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_AMB} (one letter A-Z, a-z per ambiguous symbol), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="selectivbench dataset", description="Sample a grammar and materialize its sequence dataset (spec §2-5).",
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--amb", type=_amb, required=True,
                   help=f"ambiguous letters = vocabulary - 1 = ambiguity depth, 2..{MAX_AMB} (paper: 20..40)")
    p.add_argument("--seed", type=_int_at_least(1), required=True,
                   help="grammar and data seed (>= 1; seed 0 would give every sample the same RNG)")
    p.add_argument("--size", type=_int_at_least(1), required=True, help="training samples (paper: 200000)")
    p.add_argument("--start", type=_int_at_least(0), default=0, help="first training sample index (default 0)")
    p.add_argument("--test-split", choices=TEST_SPLITS, default="faithful",
                   help="faithful: test = indices 0..test_size-1 as the authors (overlaps training); "
                        "heldout: the indices after the training range")
    p.add_argument("--test-size", type=_int_at_least(1), default=1000, help="test samples (default 1000)")
    p.add_argument("--workers", type=_int_at_least(1), default=None, help="processes (default: all usable cores)")
    p.add_argument("--out", required=True, help="output directory")
    return p


def cli_main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"selectivbench dataset: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)

    def on_sigterm(signum, frame):  # let materialize() clean up, as for Ctrl-C
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        meta = materialize(args.out, args.amb, args.seed, args.size, args.start, args.test_split, args.test_size,
                           workers=args.workers, progress=True)
    except OutDirError as e:
        print(f"selectivbench dataset: error: --out: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"selectivbench dataset: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selectivbench dataset: interrupted, nothing written", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"selectivbench dataset: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, old)
    tm = meta["timings"]
    print(f"wrote {args.out}: amb={args.amb} seed={args.seed} fingerprint={meta['fingerprint']} "
          f"train={meta['train_indices']} test={meta['test_indices']} ({meta['test_split']}, "
          f"{meta['test_in_train']} also in train) in {tm['total_s']:.1f}s")
    return 0

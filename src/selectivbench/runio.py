"""What `train` and `evaluate` share: files written atomically, the dataset, the model, the device."""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from selectivbench.atomic import atomic_path, atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from selectivbench.config import ConfigError, RunConfig

DATASET_HINT = "build it with: selectivbench dataset --amb 40 --seed SEED --size 200000 --out {path}"


# --- files ------------------------------------------------------------------------------------

def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save through a temporary file + rename: a kill never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


# --- dataset ----------------------------------------------------------------------------------

def open_dataset(path: str | Path):
    """`load_dataset(path)` with errors that say what is wrong and how to build the dataset."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"dataset directory {str(path)!r} not found; {DATASET_HINT.format(path=path)}")
    from selectivbench.dataset import DatasetError, load_dataset

    try:
        return load_dataset(path)
    except DatasetError as err:
        raise ConfigError(f"dataset {str(path)!r} is unusable: {err}; {DATASET_HINT.format(path=path)}") from None


def dataset_identity(dataset, path: str | Path) -> dict[str, Any]:
    """What a checkpoint must agree on with the dataset it resumes on (the path may move)."""
    from selectivbench.dataset import training_config

    g = dataset.grammar
    return {
        "path": str(Path(path).resolve()),
        "config_hash": dataset.meta.get("config_hash"),  # amb, seed, size, start, test split
        "grammar": g.fingerprint(),
        "amb": int(g.amb),
        "depth": int(g.depth),
        "grammar_seed": int(g.seed),
        "train_samples": int(len(dataset.train)),
        "test_samples": int(len(dataset.test)),
        "train_config": training_config(dataset.meta["config"]),  # the dataset config without its test split
    }


def identity_mismatch(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Resume check: every key must agree (keys a checkpoint of an older version lacks are covered
    by its config_hash)."""
    return [f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in now if k != "path" and k in stored and stored.get(k) != now.get(k)]


def training_identity_mismatch(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Evaluate check: the keys that fix the *training* samples must agree; the test split may differ.

    Names each differing dataset config key. A checkpoint of an older version has only the hash of
    the whole dataset config: it matches when some test split, with the checkpoint's test size,
    completes the current training config to that hash.
    """
    from selectivbench.atomic import json_digest
    from selectivbench.dataset import TEST_SPLITS

    diff = [f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in ("grammar", "amb", "depth", "grammar_seed", "train_samples")
            if stored.get(k) != now.get(k)]
    if "train_config" in stored:
        a, b = stored["train_config"], now["train_config"]
        diff += [f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}" for k in sorted(set(a) | set(b)) if a.get(k, "<missing>") != b.get(k, "<missing>")]
    elif not any(json_digest({**now["train_config"], "test_split": s, "test_size": stored.get("test_samples")}) == stored.get("config_hash")
                 for s in TEST_SPLITS):
        diff.append(f"config_hash: {stored.get('config_hash')!r} matches no test split of this training config "
                    "(a checkpoint of an older version: the differing keys are unknown)")
    return diff


# --- model ------------------------------------------------------------------------------------



def load_plugins_once(plugins: list[str]) -> None:
    """Import plugin modules (the registry skips ones already loaded), naming the config key on failure."""
    from selectivbench.models import load_plugins

    for p in plugins:
        try:
            load_plugins([p])
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError(f"config key 'plugins': cannot load {p!r}: {err}") from None


def check_arch(cfg: RunConfig) -> None:
    from selectivbench.models import available

    load_plugins_once(cfg.plugins)
    if cfg.arch is None:
        raise ConfigError(f"config key 'arch' is required; registered architectures: {', '.join(available())}")
    if cfg.arch not in available():
        raise ConfigError(f"unknown architecture {cfg.arch!r}; registered: {', '.join(available())}")


def build_model(cfg: RunConfig, grammar):
    from selectivbench.models import RecNet

    check_arch(cfg)
    try:
        return RecNet(
            cfg.arch, cfg.feat_size, vocab=grammar.vocab, num_classes=grammar.num_classes, n_layers=cfg.layers,
            d_state=cfg.d_state, dropout=cfg.dropout, chunk_size=cfg.chunk_size,
        )
    except ValueError as err:  # e.g. a size the architecture skips (transformer @ 960)
        raise ConfigError(f"cannot build {cfg.arch!r} at feat_size={cfg.feat_size}: {err}") from None


# --- device -----------------------------------------------------------------------------------

def pick_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device!r} requested but CUDA is not available")
    return dev


def pick_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast with fp32 weights (DESIGN: Precision); a no-op context in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err)

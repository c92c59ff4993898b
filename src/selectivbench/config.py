"""Run configuration (spec §9, §11): every key of one training run, its default and its doc.

A run config is resolved in this order, later wins:
  defaults  ->  the task preset (`task: task2` sets gap_max 1.0, noise 0.2, ...)  ->
  `--config YAML`  ->  `--set key=value` (in command-line order).
The config hash identifies a run's *result*: it covers every key except the operational ones
(device, progress, checkpoint cadence, plugin paths), so a run may resume on another device.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selectivbench.inputs import InputSpec


class ConfigError(ValueError):
    """A bad key or value; the message names it (the CLI exits with code 2)."""


def key(default, doc: str, choices: tuple | None = None):
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # what is trained
    task: str = key("task1", "input preset of spec §9 (sets the gap/noise keys below, overridable)", ("task1", "task2", "task3"))
    arch: str | None = key(None, "architecture: a registered mixer name (required; `selectivbench archs` lists them)")
    feat_size: int = key(256, "model width d (nominal; the architecture may remap it, e.g. transformer 648 -> 768)")
    layers: int = key(8, "number of RecNet blocks")
    d_state: int | None = key(None, "state size N of Mamba-style mixers (None = the architecture's default)")
    chunk_size: int | None = key(None, "chunk length of the chunked kernels (None = the architecture's default)")
    dropout: float = key(0.2, "dropout after every mixer")
    dropout_quirk: bool = key(True, "reproduce §15.3: the model stays in eval mode after the first evaluation (dropout off)")
    # optimisation (§11)
    lr: float = key(1e-3, "peak learning rate of Adam (betas 0.9/0.999, eps 1e-8, weight decay 0)")
    warmup: int = key(476, "linear warm-up updates (the first update uses lr 0), then cosine to 0")
    seed: int = key(1, "run seed: torch/numpy/python seeds and the per-sample gap/noise RNG")
    batch_size: int = key(64, "samples per optimizer update (effective batch)")
    micro_batch: int | None = key(None, "samples per forward/backward (None = auto: the batch on CPU, probed on CUDA)")
    grad_clip: float = key(1.0, "max global gradient norm")
    dataset_size: int | None = key(None, "training samples of the one pass (None = all of the dataset); updates = dataset_size // batch_size")
    max_updates: int | None = key(None, "stop after this many updates (quick runs; the schedule still spans dataset_size)")
    eval_every: int = key(78, "updates between test evaluations (§11: 5000 // 64)")
    test_size: int | None = key(None, "test samples (None = all of the dataset's test set)")
    test_bs: int = key(50, "test batch size")
    val_size: int = key(0, "validation samples: training-stream indices dataset_size .. dataset_size+val_size-1 (never trained on), "
                           "tested under the test condition at the end of the run -> val_acc, val_loss (0 = none)")
    # inputs (§6); the task preset sets these
    gap_min: float = key(0.1, "shortest training gap, time units (1 step = 0.1)")
    gap_max: float = key(0.1, "longest training gap, time units")
    test_gap: float | None = key(None, "fixed test gap, time units (None = gap_max; Task 4: 1, 2, 5, 10)")
    gap_prob: float = key(1.0, "probability that an element gets a gap")
    gap_start: int = key(0, "elements before this index never get a gap")
    noise: float = key(0.0, "uniform noise U[0, noise) added to every input entry (train and test)")
    grammar_gap: bool = key(False, "gaps are grammatically illegal symbols instead of zero steps (Task 3)")
    # operational (not part of the config hash)
    device: str = key("auto", "cpu, cuda, cuda:N or auto (cuda if available)")
    precision: str = key("auto", "fp32, bf16 (autocast, fp32 weights) or auto (bf16 on CUDA, fp32 on CPU)", ("auto", "fp32", "bf16"))
    recompute: str = key("auto", "recompute each layer's activations in backward instead of keeping them (one more forward; "
                                 "same result): true, false or auto (CUDA: on only if the micro-batch does not fit without it; CPU: off)",
                         ("auto", "true", "false"))
    compile: str = key("false", "torch.compile the training step's model with static shapes (batches right-padded to a multiple "
                               "of length_bucket steps, so each length compiles once): true or false", ("true", "false"))
    length_bucket: int = key(256, "with compile: training batches are padded to a multiple of this many steps (a few compiled shapes)")
    checkpoint_every: int = key(0, "also checkpoint every this many updates (0 = only at evaluations and on a signal)")
    final_checkpoint: str = key("full", "checkpoint kept at the end: full (resumable) or model (weights only, 1/3 of the size)", ("full", "model"))
    progress: str = key("auto", "progress bar: auto (only on a terminal), on, off", ("auto", "on", "off"))
    plugins: list = key([], "extra modules or .py files that register architectures")

    def input_spec(self) -> InputSpec:
        return InputSpec(
            gap_min=self.gap_min, gap_max=self.gap_max, test_gap=self.test_gap, gap_prob=self.gap_prob,
            gap_start=self.gap_start, noise=self.noise, grammar_gap=self.grammar_gap,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def hashed_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_KEYS}

    def hash(self) -> str:
        return config_hash(self.to_dict())


OPERATIONAL_KEYS = frozenset({"device", "progress", "checkpoint_every", "final_checkpoint", "plugins", "recompute", "compile", "length_bucket"})
METADATA_KEYS = frozenset({"config_hash", "dataset"})  # written into a run's config.yaml; ignored on input

# §9: the input settings of each task (Task 4 = `selectivbench evaluate` of a task2 run at test_gap 1, 2, 5, 10)
PRESETS: dict[str, dict[str, Any]] = {
    "task1": dict(gap_min=0.1, gap_max=0.1, noise=0.0, gap_prob=1.0, gap_start=0, grammar_gap=False),
    "task2": dict(gap_min=0.1, gap_max=1.0, noise=0.2, gap_prob=1.0, gap_start=0, grammar_gap=False),
    "task3": dict(gap_min=0.1, gap_max=0.1, noise=0.0, gap_prob=0.1, gap_start=50, grammar_gap=True, d_state=64),
}

FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TYPES = typing.get_type_hints(RunConfig)


def config_hash(values: dict[str, Any]) -> str:
    """16 hex chars of the sha256 of the non-operational keys (JSON, sorted)."""
    body = {k: v for k, v in values.items() if k not in OPERATIONAL_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _unknown_key(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {name!r}{hint}; `selectivbench train --help` lists every key")


def coerce(name: str, value: Any) -> Any:
    """Convert a YAML value or a `--set` string to the key's type; errors name the key."""
    if name not in FIELDS:
        raise _unknown_key(name)
    hint = _TYPES[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    base = typing.get_origin(base) or base
    if base is str and {"true", "false"} <= set(FIELDS[name].metadata["choices"] or ()):
        # a true/false/auto key: YAML reads true/on/yes as booleans, --set passes them as text
        text = str(value).strip().lower()
        value = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}.get(text, text)
    bad = ConfigError(f"config key {name!r}: cannot use {value!r} (expected {getattr(base, '__name__', base)}{' or none' if optional else ''})")
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if text.lower() in ("none", "null", "~", ""):
            if optional:
                return None
            raise bad
        if base is bool:
            if text.lower() in ("true", "yes", "on", "1"):
                return True
            if text.lower() in ("false", "no", "off", "0"):
                return False
            raise bad
        if base is list:
            parsed = yaml.safe_load(text) if text.startswith("[") else [s for s in text.split(",") if s]
            return coerce(name, parsed)
        try:
            value = float(text) if base is float else int(text)
        except ValueError:
            raise bad from None
    if value is None:
        if optional:
            return None
        raise bad
    if base is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return [str(v) for v in value]
    if not isinstance(value, str):
        raise bad
    return value


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` strings -> {key: raw string} (command-line order, later wins)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set needs key=value, got {pair!r}")
        out[name.strip()] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file: a flat mapping of keys (a run's config.yaml works too)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    return {k: v for k, v in data.items() if k not in METADATA_KEYS}


def resolve(overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults -> task preset -> overrides; every value type-checked and range-checked."""
    overrides = dict(overrides or {})
    for name in overrides:
        if name not in FIELDS:
            raise _unknown_key(name)
    values = {name: coerce(name, v) for name, v in overrides.items()}
    task = values.get("task", FIELDS["task"].default)
    if task not in PRESETS:
        raise ConfigError(f"config key 'task': unknown task {task!r}; choose one of {', '.join(PRESETS)}")
    cfg = RunConfig(**{**PRESETS[task], **values})
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    for name, f in FIELDS.items():
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, name) not in choices:
            raise ConfigError(f"config key {name!r}: {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
    positive = ["feat_size", "layers", "batch_size", "eval_every", "test_bs", "seed", "length_bucket"]
    positive += [k for k in ("d_state", "chunk_size", "micro_batch", "dataset_size", "max_updates", "test_size") if getattr(cfg, k) is not None]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"config key {name!r} must be >= 1, got {getattr(cfg, name)}")
    for name in ("lr", "grad_clip"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"config key {name!r} must be > 0, got {getattr(cfg, name)}")
    if cfg.warmup < 0 or cfg.checkpoint_every < 0:
        raise ConfigError("config keys 'warmup' and 'checkpoint_every' must be >= 0")
    if cfg.val_size < 0:
        raise ConfigError(f"config key 'val_size' must be >= 0, got {cfg.val_size}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"config key 'dropout' must be in [0, 1), got {cfg.dropout}")
    if cfg.micro_batch is not None and cfg.batch_size % cfg.micro_batch:
        raise ConfigError(f"config key 'micro_batch' ({cfg.micro_batch}) must divide batch_size ({cfg.batch_size})")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"config key 'device': {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    try:
        cfg.input_spec()
    except ValueError as err:
        raise ConfigError(f"input settings: {err}") from None


def to_yaml(cfg: RunConfig, extra: dict[str, Any] | None = None) -> str:
    """A run's config.yaml: its hash, dataset identity, then every key in declaration order."""
    head = {"config_hash": cfg.hash(), **(extra or {})}
    return yaml.safe_dump(head, sort_keys=False) + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _default(name: str) -> Any:
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def differing_keys(stored: dict[str, Any], cfg: RunConfig) -> list[str]:
    """Non-operational keys whose values differ (a key missing on one side counts, except a key
    that `stored`, written by an older version, lacks while `cfg` has it at its default)."""
    now = cfg.hashed_dict()
    stored = {**{k: _default(k) for k in now if k not in stored and now[k] == _default(k)}, **stored}
    names = sorted((set(stored) | set(now)) - OPERATIONAL_KEYS)
    return [f"{k}: {stored.get(k, '<missing>')!r} -> {now.get(k, '<missing>')!r}" for k in names if stored.get(k, "<missing>") != now.get(k, "<missing>")]


def describe_keys() -> str:
    """The `--help` epilog: every key with its default and doc, then the task presets."""
    lines = ["config keys (--set key=value; default in brackets):"]
    for name, f in FIELDS.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {name:<17} [{default!r}]  {f.metadata['doc']}")
    lines.append("")
    lines.append("task presets (applied before --config and --set):")
    for task, preset in PRESETS.items():
        lines.append(f"  {task}: " + ", ".join(f"{k}={v!r}" for k, v in preset.items()))
    return "\n".join(lines)

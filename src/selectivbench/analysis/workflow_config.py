"""Validation of the workflow config: the JSON schema, then the checks a schema cannot express.

Every error names the config key (`tasks.task4.feat[1]`), so a bad value fails at DAG-building
time, before any job runs.
"""

from __future__ import annotations

import os

import yaml
from jsonschema import Draft202012Validator

from selectivbench.analysis.plan import GAP_SOURCE_TASK, GAP_TASK, TRAIN_TASKS, fmt, task_grid


class ConfigError(ValueError):
    pass


def key_path(path) -> str:
    """jsonschema's absolute_path as a config key: ['tasks', 'task1', 'lr', 0] -> tasks.task1.lr[0]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def load_schema(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def schema_errors(config: dict, schema: dict) -> list[str]:
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"config key '{key_path(e.absolute_path)}': {e.message}" for e in errors]


def fill_defaults(config: dict, schema: dict) -> dict:
    """Fill `default:` values of the schema into missing keys (recursively, through $ref)."""
    defs = schema.get("$defs", {})

    def resolve(sub: dict) -> dict:
        while "$ref" in sub:
            ref = sub["$ref"]
            merged = {k: v for k, v in sub.items() if k != "$ref"}
            sub = {**defs[ref.split("/")[-1]], **merged}
        return sub

    def walk(node, sub: dict) -> None:
        sub = resolve(sub)
        if not isinstance(node, dict):
            return
        for key, prop in sub.get("properties", {}).items():
            prop = resolve(prop)
            if key not in node and "default" in prop:
                node[key] = yaml.safe_load(yaml.safe_dump(prop["default"]))  # a fresh copy
            if key in node:
                walk(node[key], prop)

    walk(config, schema)
    return config


def semantic_errors(config: dict, registered=None) -> list[str]:
    """Cross-key checks: plugin files, registered architectures, Task 4 needs the Task-2 checkpoints.

    `registered(config)` returns the architecture names known after loading the config's plugins.
    """
    errs = []
    for i, plugin in enumerate(config.get("plugins", [])):
        if (plugin.endswith(".py") or os.sep in plugin) and not os.path.exists(plugin):
            errs.append(f"config key 'plugins[{i}]': file {plugin!r} not found (paths are relative to the working directory)")
    if registered is not None and not errs:
        try:
            names = registered(config)
        except Exception as err:  # a plugin that does not import
            return errs + [f"config key 'plugins': loading {config.get('plugins')} failed: {err!r}"]
        for i, arch in enumerate(config["architectures"]):
            if arch not in names:
                errs.append(
                    f"config key 'architectures[{i}]': unknown architecture {arch!r}; registered: {', '.join(names)}"
                    " (a new one needs its module under src/selectivbench/models/ or in 'plugins')"
                )
    gap, source = task_grid(config, GAP_TASK), task_grid(config, GAP_SOURCE_TASK)
    if gap is not None:
        if source is None:
            errs.append(f"config key 'tasks.{GAP_TASK}': Task 4 evaluates Task-2 checkpoints, so 'tasks.{GAP_SOURCE_TASK}' must be set")
        else:
            for key in ("feat", "lr", "warmup"):
                for i, value in enumerate(gap[key]):
                    if value not in source[key]:
                        errs.append(
                            f"config key 'tasks.{GAP_TASK}.{key}[{i}]': {value} is not in tasks.{GAP_SOURCE_TASK}.{key} "
                            f"{source[key]} (Task 4 evaluates Task-2 checkpoints)"
                        )
    for task in TRAIN_TASKS + (GAP_TASK,):
        grid = task_grid(config, task)
        if grid is not None and len({fmt(float(x)) for x in grid["lr"]}) != len(grid["lr"]):
            errs.append(f"config key 'tasks.{task}.lr': two learning rates print the same ({grid['lr']})")
    for scope in ["train"] + [f"tasks.{t}.set" for t in TRAIN_TASKS + (GAP_TASK,)]:
        settings = config.get("train", {}) if scope == "train" else (task_grid(config, scope.split(".")[1]) or {}).get("set", {})
        for key in settings:
            if key in MANAGED_KEYS:
                errs.append(f"config key '{scope}.{key}': set by the workflow from {MANAGED_KEYS[key]}; remove it here")
    return errs


# run-config keys that the workflow sets itself for every run, and where they come from
MANAGED_KEYS = {
    "task": "the task of the run",
    "arch": "'architectures'",
    "feat_size": "'tasks.<task>.feat'",
    "lr": "'tasks.<task>.lr'",
    "warmup": "'tasks.<task>.warmup'",
    "seed": "'seeds'",
    "dataset_size": "'data.train_size'",
    "val_size": "'data.val_size'",
    "test_size": "'data.test_size'",
    "plugins": "'plugins'",
}


def run_config_errors(config: dict) -> list[str]:
    """Resolve the run settings of each task with the training engine's own checks (types, ranges, names)."""
    from selectivbench.config import ConfigError as RunConfigError, resolve

    errs = []
    for task in TRAIN_TASKS + (GAP_TASK,):
        grid = task_grid(config, task)
        if grid is None:
            continue
        scope = f"'train' + 'tasks.{task}.set'" if grid.get("set") else "'train'"
        try:
            resolve({**config.get("train", {}), **grid.get("set", {}), "task": GAP_SOURCE_TASK if task == GAP_TASK else task})
        except RunConfigError as err:
            errs.append(f"config key {scope}: {err}")
    return errs


def check(config: dict, schema_path: str, registered=None) -> dict:
    """Validate `config` in place (defaults filled) or raise ConfigError listing every problem."""
    schema = load_schema(schema_path)
    errs = schema_errors(config, schema)
    if not errs:
        fill_defaults(config, schema)
        errs = semantic_errors(config, registered)
        errs += [] if errs else run_config_errors(config)
    if errs:
        raise ConfigError("invalid workflow config:\n  " + "\n  ".join(errs))
    return config

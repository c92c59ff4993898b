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
    errs, names = [], None
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
    for scope, task, settings in settings_scopes(config):
        for key, value in settings.items():
            if task in TRAIN_TASKS and key == "dataset_size":  # a smaller training set for this task/architecture
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= config["data"]["train_size"]:
                    errs.append(f"config key '{scope}.{key}': {value!r} must be an integer in 1..data.train_size ({config['data']['train_size']})")
            elif task == GAP_TASK and key == "test_size":  # fewer test samples for the long Task-4 sequences
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= config["data"]["test_size"]:
                    errs.append(f"config key '{scope}.{key}': {value!r} must be an integer in 1..data.test_size ({config['data']['test_size']})")
            elif key in MANAGED_KEYS:
                errs.append(f"config key '{scope}.{key}': set by the workflow from {MANAGED_KEYS[key]}; remove it here")
            elif task == GAP_TASK:
                from selectivbench.evaluate import EVAL_KEYS

                if key not in EVAL_KEYS:
                    errs.append(f"config key '{scope}.{key}': Task 4 only tests a trained run; it may set {', '.join(EVAL_KEYS)}")
    for task in TRAIN_TASKS + (GAP_TASK,):
        for arch in (task_grid(config, task) or {}).get("arch_set", {}):  # an unused entry is fine, a typo is not
            if arch not in config["architectures"] and arch not in (names or []):
                errs.append(f"config key 'tasks.{task}.arch_set.{arch}': {arch!r} is no registered architecture")
    return errs


def settings_scopes(config: dict) -> list[tuple[str, str | None, dict]]:
    """(config key, task or None, settings) of `train`, every `tasks.<task>.set` and `arch_set` entry."""
    scopes = [("train", None, config.get("train", {}))]
    for task in TRAIN_TASKS + (GAP_TASK,):
        grid = task_grid(config, task) or {}
        scopes.append((f"tasks.{task}.set", task, grid.get("set", {})))
        scopes += [(f"tasks.{task}.arch_set.{arch}", task, s) for arch, s in grid.get("arch_set", {}).items()]
    return scopes


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
        base = {**config.get("train", {}), **grid.get("set", {}), "task": GAP_SOURCE_TASK if task == GAP_TASK else task}
        try:
            resolve(base)
        except RunConfigError as err:
            errs.append(f"config key {scope}: {err}")
        for arch, settings in grid.get("arch_set", {}).items():
            try:
                resolve({**base, **settings})
            except RunConfigError as err:
                errs.append(f"config key {scope} + 'tasks.{task}.arch_set.{arch}': {err}")
    return errs


def command_line_booleans(config: dict, schema: dict) -> None:
    """`--config from_rows=true` arrives as the string 'true' (Snakemake parses only True/False):
    read true/false/yes/no as booleans for the top-level boolean keys."""
    words = {"true": True, "yes": True, "false": False, "no": False}
    for key, prop in schema.get("properties", {}).items():
        value = config.get(key)
        if prop.get("type") == "boolean" and isinstance(value, str) and value.lower() in words:
            config[key] = words[value.lower()]


def check(config: dict, schema_path: str, registered=None) -> dict:
    """Validate `config` in place (defaults filled) or raise ConfigError listing every problem."""
    schema = load_schema(schema_path)
    command_line_booleans(config, schema)
    errs = schema_errors(config, schema)
    if not errs:
        fill_defaults(config, schema)
        errs = semantic_errors(config, registered)
        errs += [] if errs else run_config_errors(config)
    if errs:
        raise ConfigError("invalid workflow config:\n  " + "\n  ".join(errs))
    return config

"""How the workflow runs one training or evaluation job, so that no result is ever lost.

    python -m selectivbench.analysis.jobs [--attempts N] [--also-test DATASET OUT]... train|evaluate ARGS...

* The rule `exec`s this module, which calls the command's `cli_main(ARGS)` in the same process,
  so a signal from the scheduler (SIGTERM on preemption or time-out) reaches the training loop,
  which checkpoints and returns 75; the job fails with 75 and Snakemake's retry (or the next
  invocation) resumes from the checkpoint, which is not a declared output and so never deleted.
* A genuine failure (a crash, CUDA out of memory, ...) is retried while attempts remain; the
  last allowed failure is *recorded*: metrics.json gets `status: failed` with the error and the
  job succeeds, so the run appears in the results table instead of blocking or vanishing.
  (Delete that metrics.json, or use `--forcerun`, to try again.)
* Exit code 2 (bad input: a wrong key or value) is never recorded: it fails the job loudly.
* `--also-test` tests a freshly trained run on the other test splits (held-out) in the same job:
  half the jobs of a separate evaluation rule, and no second GPU allocation.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 75


def value_text(value) -> str:
    """A config value as `--set key=value` text (config.coerce parses it back)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps([str(v) for v in value])
    return str(value)


def set_args(settings: dict) -> str:
    """`--set key=value ...` for a shell command line (quoted)."""
    return " ".join(f"--set {shlex.quote(f'{key}={value_text(value)}')}" for key, value in settings.items())


def supports_key(name: str) -> bool:
    """Whether the run configuration knows `name` (keys added later by the training engine)."""
    from selectivbench.config import FIELDS

    return name in FIELDS


def task_settings(config: dict, task: str, arch: str | None = None) -> dict:
    """Run-config keys shared by every training run of `task` (the rule adds the wildcards:
    task, arch, feat_size, lr, warmup, seed), then those of `tasks.<task>.arch_set.<arch>`.
    `set`/`arch_set` may lower dataset_size (checked by workflow_config)."""
    data = config["data"]
    settings = {**config.get("train", {}), "dataset_size": data["train_size"], "test_size": data["test_size"]}
    if data.get("val_size") and supports_key("val_size"):
        settings["val_size"] = data["val_size"]
    settings.update(config["tasks"][task].get("set", {}))
    if arch is not None:
        settings.update(config["tasks"][task].get("arch_set", {}).get(arch, {}))
    if config.get("plugins"):
        settings["plugins"] = list(config["plugins"])
    return settings




def write_json_atomic(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def redirect_output(log_path: str) -> None:
    """Send this process's stdout/stderr (file descriptors 1 and 2) to the job log, appending."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def call_main(module: str, argv: list[str]) -> tuple[int, str]:
    """Run `<module>.cli_main(argv)`; returns (exit code, error text or '')."""
    try:
        rc = int(importlib.import_module(module).cli_main(argv) or 0)
        return rc, "" if rc == 0 else f"{module}.cli_main exited with code {rc}"
    except SystemExit as err:  # argparse errors
        code = err.code if isinstance(err.code, int) else EXIT_BAD_INPUT
        return code, f"{module} exited with code {code}"
    except Exception:
        return 1, traceback.format_exc(limit=20)


def count_failure(counter: Path) -> int:
    """Failures of this run so far, this one included (kept in the run directory across attempts)."""
    try:
        n = int(counter.read_text().strip() or 0) + 1
    except (FileNotFoundError, ValueError):
        n = 1
    counter.parent.mkdir(parents=True, exist_ok=True)
    counter.write_text(f"{n}\n")
    return n


def run_job(module: str, argv: list[str], metrics: str, attempts: int, precheck: str | None = None) -> int:
    """One workflow job; returns the process exit code (see the module doc).

    Failures are counted in `failures.txt` next to metrics.json (the run directory survives a
    failed attempt; only metrics.json is a declared output), so the job knows its last attempt
    without asking Snakemake; the count restarts after a failure has been recorded.
    """
    counter = Path(metrics).with_name("failures.txt")
    print(f"[selectivbench job] {module} {' '.join(argv)}", flush=True)
    if precheck:  # the source run of an evaluation failed: record at once, a retry cannot help
        rc, error = 1, precheck
    else:
        rc, error = call_main(module, argv)
        if rc == EXIT_OK and not os.path.exists(metrics):
            rc, error = 1, f"{module} exited 0 but wrote no {metrics}"
    if rc in (EXIT_OK, EXIT_INTERRUPTED, EXIT_BAD_INPUT):
        if rc == EXIT_INTERRUPTED:
            print("[selectivbench job] interrupted after checkpointing; rerun to resume", flush=True)
        return rc
    failures = attempts if precheck else count_failure(counter)
    print(f"[selectivbench job] failed (code {rc}, failure {failures} of {attempts} allowed):\n{error}", flush=True)
    if failures < attempts:
        return rc
    write_json_atomic(metrics, {"status": "failed", "exit_code": rc, "error": error[-4000:], "failures": failures})
    counter.unlink(missing_ok=True)
    print(f"[selectivbench job] recorded the failure in {metrics}", flush=True)
    return EXIT_OK


def source_problem(run_dir: str) -> str | None:
    """Why an evaluation cannot start from `run_dir` (failed source run), or None."""
    try:
        status = json.loads(Path(run_dir, "metrics.json").read_text()).get("status")
    except (OSError, ValueError) as err:
        return f"cannot read the source run's metrics.json: {err}"
    if status == "failed":
        return f"the source run {run_dir} failed (see its metrics.json)"
    return None


def test_other_splits(run_dir: str, extra: list[tuple[str, str]]) -> None:
    """After training: test the run on the other test splits (`evaluate`, in this process).

    Not retried: the training run is done and a test pass that failed on its own split's data
    would fail again; the failure is recorded in that evaluation's metrics.json.
    """
    problem = source_problem(run_dir)
    for data_dir, out_dir in extra:
        metrics = os.path.join(out_dir, "metrics.json")
        argv = ["--run", run_dir, "--dataset", data_dir, "--out", out_dir]
        print(f"[selectivbench job] selectivbench.evaluate {' '.join(argv)}", flush=True)
        rc, error = (1, problem) if problem else call_main("selectivbench.evaluate", argv)
        if rc == EXIT_OK and not os.path.exists(metrics):
            rc, error = 1, f"selectivbench.evaluate exited 0 but wrote no {metrics}"
        if rc != EXIT_OK:
            print(f"[selectivbench job] evaluation failed (code {rc}):\n{error}", flush=True)
            write_json_atomic(metrics, {"status": "failed", "exit_code": rc, "error": error[-4000:], "failures": 1})


def parse_args(args: list[str]):
    import argparse

    p = argparse.ArgumentParser(prog="python -m selectivbench.analysis.jobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attempts", type=int, default=1, help="1 + the retries allowed (the last failure is recorded)")
    p.add_argument("--also-test", nargs=2, action="append", default=[], metavar=("DATASET", "OUT"),
                   help="train only: then test the run on this dataset's test split, into OUT/metrics.json")
    p.add_argument("command", choices=["train", "evaluate"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of `selectivbench train|evaluate`")
    return p.parse_args(args)


def main(args: list[str]) -> int:
    ns = parse_args(args)
    argv = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    try:
        out = argv[argv.index("--out") + 1]
    except (ValueError, IndexError):
        print("selectivbench.analysis.jobs: the command needs --out DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    precheck = None
    if ns.command == "evaluate":
        precheck = source_problem(argv[argv.index("--run") + 1])
    rc = run_job(f"selectivbench.{ns.command}", argv, os.path.join(out, "metrics.json"), ns.attempts, precheck)
    if rc == EXIT_OK and ns.command == "train" and ns.also_test:
        test_other_splits(out, [tuple(x) for x in ns.also_test])
    sys.stdout.flush()
    sys.stderr.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

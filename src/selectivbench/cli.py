"""`selectivbench` command line: one sub-command per step of the paper's method.

Each sub-command lives in its own module as ``cli_main(argv) -> int``; this file only dispatches,
so `selectivbench --help` stays fast (torch is imported only by the commands that need it).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "dataset": ("selectivbench.dataset", "sample a grammar and materialize its sequence dataset"),
    "train": ("selectivbench.train", "train one run (task/architecture/size/lr/warmup/seed)"),
    "evaluate": ("selectivbench.evaluate", "test a trained checkpoint under another test condition (Task 4)"),
    "estimate": ("selectivbench.estimate", "estimate runs and GPU-hours per figure target of a config"),
    "archs": ("selectivbench.archs", "list the registered architectures with parameter counts"),
}


def _usage() -> str:
    lines = ["usage: selectivbench <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "`selectivbench <command> --help` documents each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from selectivbench import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"selectivbench: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.cli_main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

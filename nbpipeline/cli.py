"""The `nbp` command: parses flags, calls one library function, and is the error boundary.

Errors of nbpipeline's own (NbpipelineError) print one line ``nbp: error: ...`` and exit
with the error's code; anything else is a bug and shows its traceback. Set NBP_DEBUG=1
to get tracebacks for nbpipeline's errors too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from nbpipeline.errors import NbpipelineError
from nbpipeline.project import find_project

Handler = Callable[[argparse.Namespace], int]


def _cmd_run(args: argparse.Namespace) -> int:
    from nbpipeline.run import run_stage

    result = run_stage(find_project(), args.stage, log_output=args.log_output)
    project = find_project()
    print(
        f"nbp: stage '{result.stage}' done in {result.seconds:.1f}s: "
        f"{project.rel(result.report)}, {project.rel(result.html)}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nbp", description="Notebook stages under DVC, from experiment to production."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="execute notebooks/<stage>.ipynb with its params (DVC cmd)")
    run.add_argument("stage", help="stage name (= notebook file name without .ipynb)")
    run.add_argument("--log-output", action="store_true", help="stream cell output to stderr")
    run.set_defaults(handler=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nbp`; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except NbpipelineError as exc:
        if os.environ.get("NBP_DEBUG"):
            raise
        red, reset = ("\033[31m", "\033[0m") if sys.stderr.isatty() else ("", "")
        print(f"{red}nbp: error:{reset} {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

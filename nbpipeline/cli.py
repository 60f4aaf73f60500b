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
from pathlib import Path

from nbpipeline.errors import NbpipelineError, RegistryError
from nbpipeline.project import Project, find_project

Handler = Callable[[argparse.Namespace], int]


def _cmd_run(args: argparse.Namespace) -> int:
    from nbpipeline.pipeline.run import run_stage

    lenient = True if args.lenient or os.environ.get("NBP_LENIENT") == "1" else args.strict
    project = find_project()
    result = run_stage(project, args.stage, log_output=args.log_output, lenient=lenient,
                       progress=sys.stderr)
    print(
        f"nbp: stage '{result.stage}' done in {result.seconds:.1f}s "
        f"({result.threads} thread{'s' if result.threads != 1 else ''}): "
        f"{project.rel(result.report)}, {project.rel(result.html)}"
    )
    return 0


def _segment_project(args: argparse.Namespace) -> Project:
    """The project, seen from ``--segment`` (a model factory's segment) when given."""
    return find_project().for_segment(getattr(args, "segment", None))


def _cmd_promote(args: argparse.Namespace) -> int:
    from nbpipeline.release.promote import promote_candidate, promote_version

    if args.version and args.exp:
        raise RegistryError("--version and --exp exclude each other: give one")
    if args.version:
        done = promote_version(_segment_project(args), args.version, canary=args.canary,
                               reason=args.reason)
    else:
        experiment = None
        if args.exp:
            from nbpipeline.release.experiment import apply_experiment

            experiment = apply_experiment(find_project(), args.exp)
            print(f"nbp: applied experiment {args.exp} to the workspace (`dvc exp apply`)")
        done = promote_candidate(_segment_project(args), canary=args.canary, force=args.force,
                                 reason=args.reason, experiment=experiment)
    share = f" for {args.canary:.0%} of traffic" if args.canary is not None else ""
    forced = f" (FORCED: {done.model.forced_reason})" if done.model.forced_reason else ""
    print(f"nbp: {done.model.version} ({done.model.sha256[:12]}) is now {done.role}{share}{forced}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from nbpipeline.release.promote import rollback

    event = rollback(_segment_project(args), canary=args.canary, reason=args.reason)
    if event.data["role"] == "canary":
        print(f"nbp: canary {event.data['from']} removed; the champion serves all traffic")
    else:
        print(f"nbp: rolled back champion {event.data['from']} -> {event.data['to']}")
    return 0


def _cmd_switch(args: argparse.Namespace) -> int:
    from nbpipeline.release.promote import switch_off, switch_on

    event = (switch_on if args.command == "on" else switch_off)(_segment_project(args),
                                                                reason=args.reason)
    champion = event.data.get("champion") or "no champion"
    if args.command == "on":
        print(f"nbp: off switch lifted: {champion} serves again")
    else:
        print(f"nbp: serving switched OFF ({champion} stays champion): the server answers its "
              "fallback decision until `nbp on`")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from nbpipeline.scaffold.init import init_project

    found = init_project(Path(args.directory), data=Path(args.data), target=args.target,
                         time=args.time, positive=args.positive, task=args.task,
                         segment_by=args.segment_by)
    kinds = ", ".join(f"{name} ({kind})" for name, kind in found.features.items())
    label = f", positive label {found.positive_label!r}" if found.task == "classification" else ""
    print(f"nbp: created {args.directory}: {found.rows:,} rows, {found.task}{label}; "
          f"features: {kinds}")
    for name, why in found.skipped.items():
        print(f"nbp:   left out {name}: {why}")
    if not found.committed:
        print("nbp: files are staged but not committed (no git identity?): run `git commit`")
    print(f"nbp: next: cd {args.directory} && dvc repro")
    return 0


def _cmd_retire(args: argparse.Namespace) -> int:
    from nbpipeline.release.promote import retire

    event = retire(_segment_project(args), reason=args.reason)
    retired = ", ".join(event.data["retired"] + ([event.data["canary"]] if event.data["canary"]
                                                  else []))
    print(f"nbp: retired {retired}; no champion now: the next `nbp promote` starts a new model "
          "line (re-run `dvc repro evaluate` first so the gate no longer compares with it)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nbpipeline.release.promote import models_report

    print(models_report(_segment_project(args)))
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from nbpipeline.release.lineage import render, trace
    from nbpipeline.release.registry import Registry

    project = find_project()
    print(render(trace(Registry(project.registry), args.version, project)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from nbpipeline.report.factory import build_review

    project = _segment_project(args)
    print(f"nbp: wrote {project.rel(build_review(project))}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from nbpipeline.serve import serve

    serve(find_project(), args.host, args.port, token_file=args.token_file, docs=args.docs)
    return 0


def _add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="serve the champion (+ canary) over HTTP; log decisions")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--token-file", help="file holding the token that POST /feedback needs "
                       "(default: $NBP_SERVE_TOKEN; without one, a server beyond loopback "
                       "refuses feedback)")
    serve.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                       help="serve /docs (default: only when bound to loopback)")
    serve.set_defaults(handler=_cmd_serve)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from nbpipeline.monitor.command import monitor_command

    return monitor_command(_segment_project(args), log_output=args.log_output,
                           exit_zero=args.exit_zero)


def _cmd_replay(args: argparse.Namespace) -> int:
    from nbpipeline.monitor.command import replay_command

    return replay_command(
        find_project(), data=args.data, start=args.start, stop=args.stop, rows=args.rows,
        rate=args.rate, url=args.url, seed=args.seed, feedback=not args.no_feedback,
    )


def _add_monitor_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = sub.add_parser("monitor", help="run notebooks/monitor.ipynb: drift, quality, ROI, "
                             "alarms and actions (exit 3 on alarms, 4 on warnings only)")
    monitor.add_argument("--log-output", action="store_true",
                         help="stream the cells' own output as they run")
    monitor.add_argument("--exit-zero", action="store_true",
                         help="exit 0 even with alarms (the dvc.yaml stage uses this)")
    monitor.add_argument("--segment", metavar="SEGMENT",
                         help="a model factory's segment: its log, registry and alarms")
    monitor.set_defaults(handler=_cmd_monitor)
    replay = sub.add_parser("replay", help="send the rows of a labelled table through the "
                            "running server, then their real outcomes as feedback")
    replay.add_argument("--data", metavar="FILE",
                        help="CSV or parquet table (default: params.yaml paths.golden_path)")
    replay.add_argument("--from", dest="start", metavar="DATE",
                        help="first time to replay (on the model's time column)")
    replay.add_argument("--to", dest="stop", metavar="DATE", help="replay times before this")
    replay.add_argument("--rows", type=int, default=2000, help="rows to send (default 2000)")
    replay.add_argument("--rate", type=float, default=200.0, help="max requests/s (default 200)")
    replay.add_argument("--url", default="http://127.0.0.1:8000", help="server address")
    replay.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    replay.add_argument("--no-feedback", action="store_true", help="do not send outcomes")
    replay.set_defaults(handler=_cmd_replay)


def _cmd_schedule(args: argparse.Namespace) -> int:
    from nbpipeline.schedule.commands import schedule_command

    return schedule_command(find_project(), action=args.schedule_command, every=args.every,
                            cron=args.cron, systemd=args.systemd, install=args.install,
                            uninstall=args.uninstall, ticks=args.ticks)


def _add_schedule_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedule = sub.add_parser("schedule", help="print (or --install) a cron entry or systemd "
                              "user timer that runs `nbp monitor` (and its retrain) on a period")
    schedule.set_defaults(handler=_cmd_schedule, ticks=None)
    actions = schedule.add_subparsers(dest="schedule_command", metavar="[ACTION]")
    tick = actions.add_parser("tick", help="one scheduled run: `nbp monitor` under the lock, "
                              "logged to logs/schedule/ (what the entry runs)")
    run = actions.add_parser("run", help="run the entry's command every period in the "
                             "foreground (for containers and supervisors without cron)")
    run.add_argument("--ticks", type=int, metavar="N", help="stop after N ticks")
    for parser in (schedule, tick, run):  # given before or after the action
        parser.add_argument("--every", metavar="PERIOD", default=None if parser is schedule
                            else argparse.SUPPRESS, help="e.g. 15m, 1h, 1d (default: "
                            "params.yaml schedule.every, else 1h)")
    schedule.add_argument("--cron", metavar="FIELDS", help="cron's five time fields (default: "
                          "derived from the period)")
    schedule.add_argument("--systemd", action="store_true", help="a systemd user timer and "
                          "service instead of a cron line")
    schedule.add_argument("--install", action="store_true", help="install it (crontab, or "
                          "~/.config/systemd/user and `systemctl --user enable --now`)")
    schedule.add_argument("--uninstall", action="store_true", help="remove what --install "
                          "put in place for this project (with --systemd: the timer)")


def _add_release_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    promote = sub.add_parser("promote", help="register models/candidate if its gate passed; "
                             "make it champion (or canary)")
    promote.add_argument("--canary", type=float, metavar="FRACTION",
                         help="serve it to this share of traffic (0..1) beside the champion")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--force", action="store_true",
                       help="override a failed gate (needs --reason)")
    which.add_argument("--version", metavar="VERSION",
                       help="promote a registered version (e.g. v2) instead of the candidate")
    promote.add_argument("--exp", metavar="NAME",
                         help="first apply DVC experiment NAME (`dvc exp apply`), then promote "
                         "its candidate; the lineage names the experiment")
    promote.add_argument("--reason", help="why (recorded in the registry)")
    promote.set_defaults(handler=_cmd_promote)
    rollback = sub.add_parser("rollback", help="restore the previous champion (or drop the canary)")
    rollback.add_argument("--canary", action="store_true", help="remove the canary instead")
    rollback.add_argument("--reason", help="why (recorded in the registry)")
    rollback.set_defaults(handler=_cmd_rollback)
    switches = []
    for name, what in (("off", "switch serving off: the server answers its fallback decision"),
                       ("on", "lift the off switch: the champion (and canary) serve again")):
        switch = sub.add_parser(name, help=what + " (recorded in the registry)")
        switch.add_argument("--reason", required=True, help="why (recorded in the registry)")
        switch.set_defaults(handler=_cmd_switch)
        switches.append(switch)
    retire = sub.add_parser("retire", help="retire the champion (and canary) to start a new "
                            "model line, e.g. after changing features, target or task")
    retire.add_argument("--reason", required=True, help="why (recorded in the registry)")
    retire.set_defaults(handler=_cmd_retire)
    models = sub.add_parser("models", help="list registered model versions and their roles")
    models.set_defaults(handler=_cmd_models)
    lineage = sub.add_parser("lineage", help="trace a model version to data, params, reports, git")
    lineage.add_argument("version", help="model version, e.g. v3")
    lineage.set_defaults(handler=_cmd_lineage)
    report = sub.add_parser("report", help="build reports/index.html")
    report.set_defaults(handler=_cmd_report)
    for command in (promote, rollback, retire, models, report, *switches):
        command.add_argument("--segment", metavar="SEGMENT",
                             help="a model factory's segment: its own candidate, gate and "
                             "registry (docs/registry.md)")


def _cmd_stage_add(args: argparse.Namespace) -> int:
    from nbpipeline.pipeline.authoring import add_stage

    result = add_stage(find_project(), args.notebook, deps=args.deps, outs=args.outs,
                       metrics=args.metrics, plots=args.plots)
    for change in result.changes:
        print(f"nbp: {change}")
    if not result.changes:
        print(f"nbp: stage '{result.stage}' is already up to date")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from nbpipeline.pipeline.check import check_project

    problems = check_project(find_project())
    for problem in problems:
        print(problem)
    if problems:
        print(f"nbp: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("nbp: dvc.yaml, params.yaml and the notebooks agree")
    return 0


def _print_changes(changed: list[str], unchanged: str) -> int:
    for line in changed:
        print(f"nbp: {line}")
    if not changed:
        print(f"nbp: {unchanged}")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from nbpipeline.pipeline.check import sync_notebooks

    return _print_changes(sync_notebooks(find_project()),
                          "every parameters cell already matches params.yaml")


def _cmd_plots_setup(args: argparse.Namespace) -> int:
    from nbpipeline.pipeline.plots import install

    return _print_changes([f"wrote {line}" for line in install(find_project())],
                          "dvc plots show already renders offline")


def _add_authoring_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stage = sub.add_parser("stage", help="manage notebook stages in dvc.yaml")
    stage_sub = stage.add_subparsers(dest="stage_command", required=True, metavar="ACTION")
    add = stage_sub.add_parser("add", help="make notebooks/<name>.ipynb a pipeline stage "
                               "(parameters cell, params.yaml section, dvc.yaml stage)")
    add.add_argument("notebook", help="notebooks/<name>.ipynb")
    for flag, what in (("deps", "input file or directory"), ("outs", "output file or directory"),
                       ("metrics", "metrics file"), ("plots", "plots file")):
        add.add_argument(f"--{flag}", nargs="+", default=[], metavar="PATH", action="extend",
                         help=f"{what} of the stage (repeatable)")
    add.set_defaults(handler=_cmd_stage_add)
    check = sub.add_parser("check", help="verify that dvc.yaml, params.yaml and the notebooks "
                           "agree (exit 1 on problems)")
    check.set_defaults(handler=_cmd_check)
    sync = sub.add_parser("sync", help="rewrite the parameters cells' defaults from params.yaml")
    sync.set_defaults(handler=_cmd_sync)
    plots = sub.add_parser("plots", help="DVC plots views")
    plots_sub = plots.add_subparsers(dest="plots_command", required=True, metavar="ACTION")
    plots_sub.add_parser("setup", help="make `dvc plots show` render offline (vega inlined) "
                         "and install nbpipeline's plot templates").set_defaults(
                             handler=_cmd_plots_setup)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nbp", description="Notebook stages under DVC, from experiment to production."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="execute notebooks/<stage>.ipynb with its params (DVC cmd)")
    run.add_argument("stage", help="stage name (= notebook file name without .ipynb)")
    run.add_argument("--log-output", action="store_true",
                     help="stream the cells' own output as they run")
    trace = run.add_mutually_exclusive_group()
    trace.add_argument("--lenient", action="store_true",
                       help="only warn when the stage reads or writes files dvc.yaml does not "
                       "declare (also NBP_LENIENT=1); default: fail under DVC, warn by hand")
    trace.add_argument("--strict", action="store_const", const=False, default=None,
                       help="fail on undeclared reads/writes even when not run by DVC")
    run.set_defaults(handler=_cmd_run)
    init = sub.add_parser("init", help="create a project (notebooks, params, dvc.yaml, git, DVC) "
                          "around your own table")
    init.add_argument("directory", help="the new project's directory (must be new or empty)")
    init.add_argument("--data", required=True, metavar="FILE", help="CSV or parquet table")
    init.add_argument("--target", required=True, metavar="COLUMN", help="what to predict")
    init.add_argument("--time", metavar="COLUMN",
                      help="time column: split train/valid/golden by time (else at random)")
    init.add_argument("--positive", metavar="VALUE", help="the positive class (classification)")
    init.add_argument("--task", choices=["classification", "regression"],
                      help="default: inferred from the target")
    init.add_argument("--segment-by", metavar="COLUMN",
                      help="a model factory: one model per value of COLUMN (docs/contracts.md)")
    init.set_defaults(handler=_cmd_init)
    _add_authoring_commands(sub)
    _add_release_commands(sub)
    _add_serve_command(sub)
    _add_monitor_commands(sub)
    _add_schedule_command(sub)
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


# Commands whose process holds nothing to clean up once main() returns: their reports are
# written atomically, the kernel is stopped, the run directory removed. Tearing down the
# interpreter (modules of jupyter, nbconvert, papermill, zmq) took 0.9-1.7 s after a
# one-cell `nbp run` on the loaded 2-core machine, 0.05 s with os._exit.
_EXIT_AT_ONCE = ("run",)


def entry() -> None:
    """The `nbp` command (and `python -m nbpipeline`): :func:`main`, then exit; after
    `nbp run`, without tearing down the interpreter."""
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] and argv[0] in _EXIT_AT_ONCE:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

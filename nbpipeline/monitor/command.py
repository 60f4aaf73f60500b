"""What ``nbp monitor`` and ``nbp replay`` do (the CLI only parses flags and calls these).

``nbp monitor`` executes notebooks/monitor.ipynb through the runner (its executed notebook,
reports/monitor.html, is the monitoring report), then reads the run's summary
(``alarms/last_run.json``), prints every warning, alarm and action and the impact summary
(quality, estimated quality, ROI, output drift, what to do). When the run requested a
retrain (its alarms show the model suffering: output drift, estimated or realised quality
or ROI below the floor — see :func:`nbpipeline.monitor.actions.retrain_trigger`) and
``retrain_action`` is ``dvc``, it retrains (:mod:`nbpipeline.monitor.retrain`: ``dvc exp
run`` on the champion's labelled predictions, or "nothing new to learn from"), and returns exit
code :data:`ALARM_EXIT` when there are alarms, :data:`WARN_EXIT` when the inputs moved but
nothing says the model suffers, 0 when quiet or when there is no traffic yet.

A model factory's segment (``nbp monitor --segment north``: ``project.segment``) runs the
same notebook as ``monitor@north``: ``{segment}`` in the ``monitor:`` values names the
segment's prediction log, reference, registry and alarm log (docs/monitor.md); its retrain
uses that segment's rows and stages and promotes into its registry only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbpipeline.errors import MonitorError
from nbpipeline.params import load_params
from nbpipeline.project import Project

ALARM_EXIT = 3  # the model or the service is affected
WARN_EXIT = 4  # only warnings: the inputs moved, no impact found
STAGE = "monitor"
DEFAULT_URL = "http://127.0.0.1:8000"


def _settings(project: Project) -> dict[str, Any]:
    from nbpipeline.monitor.config import MonitorConfig
    from nbpipeline.pipeline.stages import segment_templated, with_segment

    section = load_params(project.params_yaml).get(STAGE) or {}
    templated = segment_templated(section)
    if templated and not project.segment:
        raise MonitorError(f"params.yaml: monitor.{templated[0]} names a segment's file "
                           f"({section[templated[0]]}): this is a model factory; monitor one "
                           "segment with `nbp monitor --segment NAME`")
    return MonitorConfig.from_params(with_segment(section, project.segment)).as_dict()


def _champion_task(project: Project) -> str | None:
    from nbpipeline.release.registry import Registry

    if not project.registry.is_dir():
        return None
    registry = Registry(project.registry)
    champion = registry.state().champion
    return None if champion is None else registry.contract(champion.version).task


def summary_path(project: Project) -> Path:
    """Where the monitor notebook leaves the summary of its run."""
    from nbpipeline.monitor.core import SUMMARY_NAME

    return (project.root / _settings(project)["alarm_log"]).parent / SUMMARY_NAME


def monitor_command(
    project: Project, *, log_output: bool = False, exit_zero: bool = False,
    echo: Callable[[str], None] = print,
) -> int:
    """Run the monitor stage, print its findings, maybe retrain; return the exit code.

    ``exit_zero`` is the pipeline mode (the dvc.yaml ``monitor`` stage): alarms are printed
    but the exit code is 0, and ``retrain_action: dvc`` only leaves the marker (DVC holds
    its lock while the stage runs).
    """
    # here, not at the top: `nbp` imports this module at start-up, these pull in numpy
    from nbpipeline.monitor.alarms import alarm_line
    from nbpipeline.monitor.impact import summary_lines
    from nbpipeline.pipeline.run import run_stage

    started = time.time()
    settings = _settings(project)
    stage = f"{STAGE}@{project.segment}" if project.segment else STAGE
    result = run_stage(project, stage, log_output=log_output)
    path = summary_path(project)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MonitorError(
            f"{project.rel(path)}: no readable summary after running the monitor notebook "
            f"({exc}); the notebook must call nbpipeline.monitor.run_monitor (see "
            "notebooks/monitor.ipynb in the nbpipeline repository)"
        ) from exc
    if path.stat().st_mtime < started - 1:
        raise MonitorError(
            f"{project.rel(path)} was not written by this run; the monitor notebook must call "
            "nbpipeline.monitor.run_monitor"
        )
    echo(f"nbp: monitor: {summary['status']} ({summary['predictions']:,} predictions in "
         f"{summary['windows']} windows; report {project.rel(result.html)})")
    if summary["status"] == "no traffic yet":
        echo("nbp: monitor: no traffic yet - start `nbp serve` and send requests, "
             "or replay a labelled table with `nbp replay --data FILE`")
    if summary["status"] != "no traffic yet" and _champion_task(project) == "regression":
        echo("nbp: monitor: a regression model: input drift, quality on feedback (RMSE, MAE, "
             "R²), traffic and latency are judged; output drift and ROI are not (they need "
             "probabilities and decisions)")
    for alarm in summary["alarms"]:
        new = "" if alarm["id"] in summary["new_alarms"] else " (already logged)"
        echo(alarm_line(alarm) + new)
    for action in summary["actions"]:
        echo(f"ACTION {action['kind']}: {action['reason']}"
             + (f" ({action['detail']})" if action.get("detail") else ""))
    if summary.get("webhook_error"):
        echo(f"WARNING {summary['webhook_error']}")
    if summary["status"] != "no traffic yet":
        for line in summary_lines(summary["impact"]):
            echo(f"nbp: monitor: {line}")
    if summary.get("ab"):
        echo(f"nbp: monitor: {summary['ab']['sentence']}")
    retrain = any(a["kind"] == "retrain_requested" for a in summary["actions"])
    if retrain and settings["retrain_action"] == "dvc" and exit_zero:
        echo("nbp: monitor: retraining requested; inside `dvc repro` only the marker "
             f"{settings['retrain_marker']} is written - run `nbp monitor` afterwards to retrain")
    elif retrain and settings["retrain_action"] == "dvc":
        from nbpipeline.monitor import retrain as retraining  # pandas: only when retraining

        done = retraining.retrain(project, project.root / settings["predlog_path"], echo=echo)
        echo(f"nbp: monitor: {done.message}")
    if exit_zero:
        return 0
    return {"alarm": ALARM_EXIT, "warn": WARN_EXIT}.get(summary.get("level", "ok"), 0)


def served_features(url: str, timeout: float = 10.0, wait: float = 15.0) -> list[str]:
    """Feature names the running server's champion expects (GET /schema); a server that
    is still starting (connection refused) is waited for up to ``wait`` seconds."""
    import httpx

    deadline = time.monotonic() + wait
    while True:
        try:
            body = httpx.get(f"{url.rstrip('/')}/schema", timeout=timeout).json()
            break
        except httpx.ConnectError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            error: Exception = exc
        except (httpx.HTTPError, ValueError) as exc:
            error = exc
        raise MonitorError(
            f"cannot read {url}/schema ({error}); start the server with `nbp serve` "
            "or pass its address with --url"
        ) from error
    for role in ("champion", "canary"):
        props = (body.get(role) or {}).get("row", {}).get("properties")
        if props:
            return list(props)
    raise MonitorError(
        f"{url}/schema lists no serving model; promote one with `nbp promote` first"
    )


def replay_command(
    project: Project, *, data: str | None, start: str | None, stop: str | None, rows: int,
    rate: float, url: str, seed: int = 0, feedback: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """Replay ``rows`` of a labelled table through the server at ``url``, with outcomes.

    The table defaults to the golden split (params.yaml ``paths.golden_path``); the model
    contract (features, target, time column) is the champion's.
    """
    from nbpipeline.monitor.replay import OUTCOME, replay, replay_rows
    from nbpipeline.release.registry import Registry

    registry = Registry(project.registry)
    champion = registry.state().champion
    if champion is None:
        raise MonitorError("no champion in the registry: `nbp promote` a model first, then "
                           "`nbp serve`, then replay")
    contract = registry.contract(champion.version)
    params = load_params(project.params_yaml)
    path = data or (params.get("paths") or {}).get("golden_path")
    if not path:
        raise MonitorError("no table to replay: pass --data FILE (or set paths.golden_path)")
    frame = replay_rows(project.root / path, contract, start=start, stop=stop, rows=rows,
                        seed=seed)
    if frame.empty:
        raise MonitorError(f"{path}: no rows to replay"
                           + (f" between {start or 'the start'} and {stop or 'the end'}"
                              if start or stop else ""))
    span = ""
    if contract.time_column:
        t = frame[contract.time_column]
        span = f" from {t.min():%Y-%m-%d} to {t.max():%Y-%m-%d}"
    echo(f"nbp: replay: {len(frame):,} rows of {path}{span} to {url} at <= {rate:g}/s "
         f"(mean outcome {frame[OUTCOME].mean():.3f})")
    result = replay(url, frame, served_features(url), rate=rate, send_feedback=feedback,
                    progress=lambda n: echo(f"  {n:,} sent"))
    echo(f"nbp: replay: {result.summary()}")
    if result.first_error:
        echo(f"nbp: replay: first error: {result.first_error}")
    return 0 if result.errors == 0 else 1

"""Run one stage: validate its parameters, execute its notebook with papermill, write reports.

``run_stage`` is what ``nbp run <stage>`` (the command of every dvc.yaml notebook stage)
calls. Order of work:

1. read params.yaml and the notebook; resolve the stage's values (nbpipeline.params) —
   every parameter problem is reported here, before any kernel starts;
2. execute the notebook with papermill (kernel over IPC sockets in a private run
   directory, immediate shutdown, environment ``NBPIPELINE_STAGE``/``NBPIPELINE_ROOT`` so
   notebooks know they run under the pipeline); the HTML renderer's process
   (nbpipeline.pipeline.stage_page) warms up meanwhile; run directories left by dead
   runs are removed first (nbpipeline.pipeline.kernel);
   each finished cell (and every ~10 s of a long one) is reported to ``progress``
   (nbpipeline.pipeline.progress: ``nbp run`` passes stderr);
3. on success write ``reports/<stage>.ipynb`` (volatile metadata removed) and
   ``reports/<stage>.html``, each atomically;
   on failure keep the partially executed notebook as ``reports/<stage>.failed.ipynb``
   (+ ``.html``) and raise StageFailedError naming notebook, cell and exception.
   Errors in cells tagged ``raises-exception`` are expected and do not fail the stage;
4. when dvc.yaml defines the stage, the files the kernel's process tree read and wrote
   were traced (nbpipeline.pipeline.trace; no other process is): reading a project file that is not
   a dep, or writing one that is not an out, fails the stage when DVC runs it
   (``$DVC_STAGE`` set: dvc.lock would record a lie) and is a warning on stderr when
   `nbp run` is typed by hand; ``lenient`` True/False forces the warning/the failure.

``nbp run train@north`` runs a model factory's segment (docs/contracts.md): the same
notebook, ``{segment}`` in its params.yaml values replaced by ``north``, a ``segment``
parameter (if declared) set to it, reports, metrics and plots in the segment's folders.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nbpipeline import lean, threads
from nbpipeline.errors import NbpipelineError, NotebookError, StageError, StageFailedError
from nbpipeline.notebook import (
    first_unexpected_error,
    kernel_language,
    kernel_name,
    notebook_parameters,
    parameters_cell_index,
    read_notebook,
    stable_cell_ids,
    strip_volatile,
    without_error_banners,
    write_notebook,
)
from nbpipeline.params import load_params, stage_values
from nbpipeline.pipeline.kernel import Kernel, RunDir, import_client, remove_stale
from nbpipeline.pipeline.progress import ENGINE, Progress, register_engine
from nbpipeline.pipeline.stage_page import PageRenderer
from nbpipeline.pipeline.stage_report import summarise_run
from nbpipeline.pipeline.stages import (
    SEGMENT_PARAMETER,
    NotebookStage,
    load_stage,
    split_stage,
    with_segment,
)
from nbpipeline.pipeline.trace import Trace, Tracer, describe
from nbpipeline.project import (
    ROOT_ENV,
    RUNNING_ENV,
    SEGMENT_ENV,
    STAGE_ENV,
    Project,
    write_text_atomic,
)

NO_TRACE_ENV = "NBP_NO_TRACE"  # set to 1: no file tracing at all (e.g. to measure its cost)


@dataclass(frozen=True)
class RunResult:
    """Where a successful run left its reports."""

    stage: str
    notebook: Path
    report: Path
    html: Path
    parameters: dict[str, Any]
    seconds: float
    threads: int  # BLAS/OpenMP threads the kernel ended with (nbpipeline.threads)
    # where the seconds went, in order: "plan" (params, notebook), "renderer" (kernel client
    # import, page renderer fork), "kernel" (kernel start and papermill's own work, beyond
    # the cells), "cells", "shutdown", "report"
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StagePlan:
    """Everything known about a stage before its kernel starts."""

    stage: str
    notebook_path: Path
    kernel: str
    parameters: dict[str, Any]
    parameters_cell: int
    notebook: Any  # the source NotebookNode, cell ids made stable
    params: dict[str, Any]  # params.yaml as read for this plan


def plan_stage(project: Project, stage: str) -> StagePlan:
    """Validate ``stage`` against params.yaml and its notebook; no kernel is started."""
    path = project.notebook(stage)
    if not path.is_file():
        raise StageError(
            f"stage '{stage}': no notebook at {project.rel(path)}; create it, or check the "
            "stage name in dvc.yaml (`cmd: nbp run <stage>` runs notebooks/<stage>.ipynb)"
        )
    rel = project.rel(path)
    nb = read_notebook(path, name=rel)
    language = kernel_language(nb)
    if language not in (None, "python", "python3"):
        kernel = kernel_name(nb, rel)
        not_python = (
            f"a {language} notebook cannot run as an nbpipeline stage (its parameters cell is "
            "parsed as Python literals); port it to Python, or run it from dvc.yaml with its "
            "own command instead of `nbp run`"
        )
        if kernel not in _installed_kernels():
            raise _kernel_missing(rel, kernel, f"; besides, {not_python}")
        raise NotebookError(f"{rel}: {not_python}")
    declared = notebook_parameters(nb, rel)
    params = load_params(project.params_yaml)
    segment = {SEGMENT_PARAMETER: project.segment or ""}  # never from params.yaml
    values = with_segment(stage_values(
        params, stage, {k: v for k, v in declared.items() if k not in segment},
        params_file="params.yaml", notebook=rel), project.segment)
    values.update({k: v for k, v in segment.items() if k in declared})
    return StagePlan(
        f"{stage}@{project.segment}" if project.segment else stage, path,
        kernel_name(nb, rel), values, parameters_cell_index(nb, rel),
        stable_cell_ids(nb), params,
    )


def _installed_kernels() -> list[str]:
    from jupyter_client.kernelspec import KernelSpecManager

    return sorted(KernelSpecManager().find_kernel_specs())


def _kernel_missing(rel: str, kernel: str, extra: str = "") -> NotebookError:
    known = ", ".join(_installed_kernels()) or "none"
    return NotebookError(
        f"{rel}: kernel '{kernel}' is not installed (installed kernels: {known}); pick one of "
        f"them in JupyterLab (Kernel > Change Kernel) and save, or install the kernel{extra}"
    )


class _OwnParameterChecks(logging.Filter):
    """Drops papermill's guesses about the parameters cell: its line-based parser warns
    "Unable to parse line" on a string holding " = " and then "Passed unknown parameter";
    nbp has already checked every parameter against the cell's AST (plan_stage)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Unable to parse line", "Passed unknown parameter"))


def _recorded_files(project: Project, stage: str) -> list[Path]:
    """Files nbpipeline.record writes for ``stage``; a run starts without stale ones."""
    plots = project.plots / stage
    return [
        project.metrics / f"{stage}.json",
        project.metrics / f"{stage}.artifacts.json",
        *(sorted(plots.glob("*.csv")) if plots.is_dir() else []),
    ]


def _source_cell_number(plan: StagePlan, executed_index: int, injected: bool) -> int:
    """1-based number of the source notebook cell behind ``executed_index``."""
    shift = 1 if injected and executed_index > plan.parameters_cell else 0
    return executed_index - shift + 1


def describe_cell(number: int, exec_count: int | None, source: str) -> str:
    """A cell as the user finds it in JupyterLab: 'cell 4 (In [3], first line: x = 1 / 0)'.

    ``number`` counts every cell of the source notebook (markdown too, papermill's
    injected cell not); ``In [n]`` is the execution count shown in the executed report.
    """
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    first = first if len(first) <= 60 else first[:57] + "..."
    count = exec_count if exec_count is not None else " "
    return f"cell {number} (In [{count}], first line: {first})"


_HINTS = {
    "StdinNotImplementedError": "a stage cannot ask for input(); make the value a parameter",
    "SystemExit": "sys.exit() with an error code fails the stage; let the notebook finish",
}


def _tolerate_expected_errors(running: Path, exc: Any) -> Any:
    """The executed notebook if every error was in a ``raises-exception`` cell; else raise.

    papermill fails a run on any error output; nbclient (and JupyterLab users) treat cells
    tagged ``raises-exception`` as expected to raise.
    """
    from papermill.exceptions import PapermillExecutionError

    if not running.exists():
        raise exc
    nb = without_error_banners(read_notebook(running))
    unexpected = first_unexpected_error(nb)
    if unexpected is None:
        return nb
    if unexpected[0] == exc.cell_index:
        raise exc
    index, output = unexpected
    raise PapermillExecutionError(
        cell_index=index, exec_count=nb.cells[index].get("execution_count"),
        source=nb.cells[index].source, ename=output.get("ename"),
        evalue=output.get("evalue"), traceback=output.get("traceback", []),
    ) from exc


def _start_kernel(
    project: Project, plan: StagePlan, run_dir: RunDir, env: dict[str, str],
) -> Kernel:
    from jupyter_client.kernelspec import NoSuchKernel

    try:
        return Kernel(plan.kernel, project.root, run_dir, env)
    except NoSuchKernel as exc:
        raise _kernel_missing(project.rel(plan.notebook_path), plan.kernel) from exc


def _keep_failed(
    project: Project, plan: StagePlan, exc: Any, running: Path, failed: Path,
    pages: PageRenderer,
) -> StageFailedError:
    """Keep the partially executed notebook as ``failed`` (+ HTML); the one-line error
    naming the cell."""
    shutil.move(running, failed)
    try:
        write_text_atomic(failed.with_suffix(".html"), pages.render(read_notebook(failed)))
    except Exception:  # the .ipynb is what matters; HTML of a broken run is a bonus
        pass
    cell = describe_cell(_source_cell_number(plan, exc.cell_index, bool(plan.parameters)),
                         exc.exec_count, exc.source or "")
    evalue = (exc.evalue or "").strip().splitlines()
    hint = f"\n  hint: {_HINTS[exc.ename]}" if exc.ename in _HINTS else ""
    return StageFailedError(
        f"stage '{plan.stage}' failed: {project.rel(plan.notebook_path)} {cell} raised "
        f"{exc.ename}: {evalue[0] if evalue else ''}\n"
        f"  partially executed notebook (error shown at that cell): {project.rel(failed)}"
        f"{hint}"
    )


def _traced_problems(
    trace: Trace, declared: NotebookStage, plan: StagePlan, project: Project,
) -> str:
    reads, writes = trace.undeclared(declared)
    return describe(declared.name, reads, writes, project.rel(plan.notebook_path))


def run_stage(
    project: Project, stage: str, *, log_output: bool = False, lenient: bool | None = None,
    trace: bool = True, progress: TextIO | None = None,
) -> RunResult:
    """Execute ``stage``'s notebook with its parameters; write its reports atomically.

    With ``trace`` (and a dvc.yaml stage running ``nbp run <stage>``), undeclared reads and
    writes fail the stage after its reports are written (``lenient=None``: only under DVC;
    True: never, a warning; False: always). ``progress``: where to report each finished
    cell and every ~10 s of a long one (nbpipeline.pipeline.progress); ``log_output``:
    stream the cells' stdout and stderr to ours as they run.
    """
    if lenient is None:
        lenient = not os.environ.get("DVC_STAGE")
    trace = trace and os.environ.get(NO_TRACE_ENV, "") in ("", "0")
    started = time.perf_counter()
    stage, segment = split_stage(stage)
    project = project.for_segment(segment)
    plan = plan_stage(project, stage)
    timings = {"plan": time.perf_counter() - started}
    # the HTML renderer's process warms up while the kernel boots and the cells run; forked
    # from here, it shares the modules imported so far (nbformat, jupyter_client)
    forking = time.perf_counter()
    import_client()
    with PageRenderer() as pages:
        timings["renderer"] = time.perf_counter() - forking
        return _run_planned(project, plan, stage, segment, pages, started, timings,
                            log_output=log_output, lenient=lenient, trace=trace,
                            progress=progress)


def _run_planned(
    project: Project, plan: StagePlan, stage: str, segment: str | None, pages: PageRenderer,
    started: float, timings: dict[str, float], *, log_output: bool, lenient: bool,
    trace: bool, progress: TextIO | None,
) -> RunResult:
    """run_stage once ``plan`` is valid: the kernel, the reports, the tracer's verdict."""
    try:  # one read of dvc.yaml: the tracer checks its deps/outs, the record hashes them
        declared = load_stage(project, plan.stage, plan.params)
    except NbpipelineError:
        if trace:
            raise
        declared = None  # untraced, a broken dvc.yaml only leaves the hashes out
    reports = project.reports
    reports.mkdir(parents=True, exist_ok=True)
    running = reports / f".{stage}.running.ipynb"
    report = reports / f"{stage}.ipynb"
    report_html = reports / f"{stage}.html"
    failed = reports / f"{stage}.failed.ipynb"
    for stale in (failed, failed.with_suffix(".html"), *_recorded_files(project, stage)):
        stale.unlink(missing_ok=True)

    remove_stale()
    run_dir = RunDir()
    slot = threads.Slot()
    slot.acquire()  # counted by concurrent stages until this run ends
    ran_with = threads.settings(plan.params)
    env = {**os.environ, STAGE_ENV: stage, ROOT_ENV: str(project.root), RUNNING_ENV: "1",
           **threads.environment(ran_with.threads), threads.SLOT_HELD_ENV: "1",
           threads.RECORD_ENV: str(run_dir.path / "threads.json"),
           **({SEGMENT_ENV: segment} if segment else {})}
    tracer = (Tracer(project.root, stage, run_dir.path / "trace.log", segment=segment)
              if trace and declared else None)
    env.update((tracer.start() if tracer else None) or {})
    trace_result = None
    cells = Progress(plan.stage, progress)
    try:
        launched = time.perf_counter()
        kernel = _start_kernel(project, plan, run_dir, env)  # boots while papermill imports
        try:
            papermill = lean.papermill()
            register_engine()
            for name in ("papermill", "papermill.translators"):
                logging.getLogger(name).addFilter(_OwnParameterChecks())
            from papermill.exceptions import PapermillExecutionError

            try:
                try:
                    nb = papermill.execute_notebook(
                        plan.notebook,
                        str(running),
                        parameters=plan.parameters,
                        kernel_name=plan.kernel,
                        cwd=str(project.root),
                        progress_bar=False,
                        engine_name=ENGINE,
                        progress=cells,
                        stdout_file=sys.stdout if log_output else None,
                        stderr_file=sys.stderr if log_output else None,
                        request_save_on_cell_execute=False,
                        km=kernel.manager,
                    )
                except PapermillExecutionError as first:
                    nb = _tolerate_expected_errors(running, first)
            except PapermillExecutionError as exc:
                raise _keep_failed(project, plan, exc, running, failed, pages) from exc
        finally:
            cells.close()
            executed = time.perf_counter()
            kernel.stop()
        timings["cells"] = sum(cells.cell_seconds.values())
        timings["kernel"] = executed - launched - timings["cells"]
        timings["shutdown"] = time.perf_counter() - executed
        trace_result = tracer.stop() if tracer and not tracer.unavailable else None
        thread_record = threads.read_record(run_dir.path / "threads.json")
    finally:
        running.unlink(missing_ok=True)
        run_dir.remove()
        slot.release()

    reporting = time.perf_counter()
    ran = thread_record or {**asdict(ran_with), "threadpools": None}  # kernel's record, if any
    strip_volatile(nb)
    record = summarise_run(project, stage, nb, ran, plan.parameters, started, declared)
    nb.metadata.setdefault("papermill", {})["output_path"] = project.rel(report)
    nb.metadata["papermill"]["input_path"] = project.rel(plan.notebook_path)
    write_notebook(nb, report)
    write_text_atomic(report_html, pages.render(nb, record))
    timings["report"] = time.perf_counter() - reporting
    if trace_result is not None and declared is not None:
        problems = _traced_problems(trace_result, declared, plan, project)
        if problems and not lenient:
            raise StageError(problems + f"\n  (`nbp run {plan.stage} --lenient` only warns)")
        if problems:
            print(f"nbp: warning: {problems}", file=sys.stderr)
    elif tracer is not None and tracer.unavailable:
        print(f"nbp: warning: stage '{plan.stage}': deps and outs not checked: "
              f"{tracer.unavailable}",
              file=sys.stderr)
    return RunResult(
        plan.stage, plan.notebook_path, report, report_html, plan.parameters,
        time.perf_counter() - started, int(ran["threads"]), timings,
    )

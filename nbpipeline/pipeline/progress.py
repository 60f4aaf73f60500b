"""Live progress of a running stage: a line per finished code cell, and a line every ~10 s
while a cell runs.

``nbp run`` writes these lines to stderr, which `dvc repro` and `dvc exp run` pass through::

    nbp run train: cell 3/6 done in 0.8 s: import time
    nbp run train: cell 4/6 running for 10 s: Hyperparameter search
    nbp run train: cell 4/6 done in 14.2 s: Hyperparameter search

Plain lines, each flushed at once, no carriage returns or colours: a terminal, DVC's
pass-through and a CI log show the same thing. A cell is named by the markdown heading
right above it, else by its first line. Cells are counted among the executed notebook's
code cells (the injected parameters cell included).

papermill reaches the reporter through an engine of its own (:data:`ENGINE`, registered by
:func:`register_engine`): its execution manager calls :class:`Progress` when a cell starts
and ends. The ticker is one thread that sleeps until the next 10 s mark (it wakes at most
once per tick), so it takes no CPU from the kernel.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

from nbpipeline.notebook import INJECTED_TAG

ENGINE = "nbpipeline"
TICK_SECONDS = 10.0
_LABEL_WIDTH = 70


def cell_label(nb: Any, index: int) -> str:
    """What a person calls cell ``index``: the heading of the markdown cell right above it,
    else its first non-blank line (shortened to one line of a log)."""
    cell = nb.cells[index]
    if INJECTED_TAG in cell.get("metadata", {}).get("tags", []):
        return "parameters injected by nbp run"
    above = nb.cells[index - 1] if index > 0 else None
    lines: list[str] = []
    if above is not None and above.cell_type == "markdown":
        lines = [ln.lstrip("#").strip() for ln in above.source.splitlines()
                 if ln.startswith("#")]
    if not lines:
        lines = [ln.strip() for ln in cell.source.splitlines()]
    label = next((ln for ln in lines if ln), "(empty cell)")
    return label if len(label) <= _LABEL_WIDTH else label[: _LABEL_WIDTH - 3] + "..."


class Progress:
    """Reports the cells of one stage run to ``stream`` (None: only times them)."""

    def __init__(self, stage: str, stream: TextIO | None, tick: float = TICK_SECONDS) -> None:
        self._prefix = f"nbp run {stage}:"
        self._stream = stream
        self._tick = tick
        self._nb: Any = None
        self._numbers: dict[int, int] = {}
        self._lock = threading.Lock()
        self._current: tuple[int, float] | None = None  # cell index, start (perf_counter)
        self._ticks_shown = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.cell_seconds: dict[int, float] = {}  # executed cell index -> seconds

    def start(self, nb: Any) -> None:
        """Called once the executed notebook (parameters injected) is known."""
        self._nb = nb
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self._numbers = {index: n for n, index in enumerate(code, start=1)}

    def cell_started(self, index: int) -> None:
        with self._lock:
            self._current = (index, time.perf_counter())
            self._ticks_shown = 0
        if self._ticker is None and self._stream is not None:
            self._ticker = threading.Thread(target=self._run_ticker, name="nbp-progress",
                                            daemon=True)
            self._ticker.start()

    def cell_finished(self, index: int, failed: bool = False) -> None:
        with self._lock:
            if self._current is None or self._current[0] != index:
                return
            seconds = time.perf_counter() - self._current[1]
            self._current = None
        self.cell_seconds[index] = seconds
        if index in self._numbers and self._stream is not None:
            verb = "failed after" if failed else "done in"
            self._line(index, f"{verb} {seconds:.1f} s")

    def close(self) -> None:
        """Stop the ticker (idempotent)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _line(self, index: int, what: str) -> None:
        assert self._stream is not None
        number = self._numbers[index]
        text = (f"{self._prefix} cell {number}/{len(self._numbers)} {what}: "
                f"{cell_label(self._nb, index)}\n")
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing a stage
            pass

    def _run_ticker(self) -> None:
        while not self._stop.wait(self._next_wait()):
            with self._lock:
                if self._current is None:
                    continue
                index, started = self._current
                elapsed = time.perf_counter() - started
                if elapsed < (self._ticks_shown + 1) * self._tick:
                    continue
                self._ticks_shown = int(elapsed // self._tick)
            if index in self._numbers:
                self._line(index, f"running for {self._ticks_shown * self._tick:.0f} s")

    def _next_wait(self) -> float:
        with self._lock:
            if self._current is None:
                return self._tick
            due = self._current[1] + (self._ticks_shown + 1) * self._tick
        return max(0.01, due - time.perf_counter())


def register_engine() -> None:
    """Register :data:`ENGINE` with papermill (idempotent): nbclient's engine whose execution
    manager reports cells to the ``progress`` keyword argument of ``execute_notebook``."""
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    if ENGINE in papermill_engines._engines:
        return

    class _Manager(NotebookExecutionManager):  # type: ignore[misc]
        progress: Progress | None = None

        def notebook_start(self, **kwargs: Any) -> None:
            super().notebook_start(**kwargs)
            if self.progress:
                self.progress.start(self.nb)

        def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
            super().cell_start(cell, cell_index, **kwargs)
            if self.progress and cell_index is not None:
                self.progress.cell_started(cell_index)

        def cell_complete(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
            super().cell_complete(cell, cell_index, **kwargs)
            if self.progress and cell_index is not None:
                failed = cell.metadata.papermill.get("status") == self.FAILED
                self.progress.cell_finished(cell_index, failed)

    class _Engine(NBClientEngine):  # type: ignore[misc]
        @classmethod
        def execute_notebook(
            cls, nb: Any, kernel_name: str, output_path: str | None = None,
            progress_bar: bool = False, log_output: bool = False,
            autosave_cell_every: int = 30, progress: Progress | None = None, **kwargs: Any,
        ) -> Any:
            # papermill's Engine.execute_notebook, with our manager
            manager = _Manager(nb, output_path=output_path, progress_bar=progress_bar,
                               log_output=log_output, autosave_cell_every=autosave_cell_every)
            manager.progress = progress
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output,
                                             **kwargs)
            finally:
                manager.cleanup_pbar()
                manager.notebook_complete()
                if progress:
                    progress.close()
            return manager.nb

    papermill_engines.register(ENGINE, _Engine)

"""Progress of a deployment: on a terminal (rich), and as bootc's progress-v0 JSON lines
(`--progress-fd N`).

Before layers are fetched: upstream's `layers already present: N; layers needed: M
(size)`. While they are fetched: bytes per layer and in total (ProgressBytes events with
a subtask per layer). Then each step (flattening, committing, deploying) as it begins and
ends (ProgressSteps). On a terminal the same shows as bars and a spinner on stderr, so
stdout keeps only what the verb says; off a terminal, or with `--quiet`, nothing is drawn.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from pybootc.errors import BootcError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID
    from rich.status import Status

    from pybootc.stores.protocol import Pruned

PROTOCOL_VERSION = "0.1.0"
TASK = "deploying"
FETCH_TASK = "pulling"
STEPS = {
    "pulling": "Pulling the image",
    "flattening": "Flattening and post-processing the layers",
    "committing": "Committing to OSTree",
    "deploying": "Deploying",
}
# What a step counts, shown beside its spinner.
UNITS = {"flattening": "entries", "committing": "paths"}
# ProgressBytes events at most this often (s), and always when a layer completes.
_EVENT_INTERVAL = 0.1


@dataclass
class _Layer:
    digest: str
    total: int
    done: int = 0


@dataclass
class _Fetch:
    """The layers being fetched, and what has arrived of each."""

    layers: dict[str, _Layer]
    cached_layers: int
    cached_bytes: int
    last_event: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return sum(layer.done for layer in self.layers.values())

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def finished(self) -> int:
        return sum(1 for layer in self.layers.values() if layer.done >= layer.total)


def _ignore_count(done: int) -> None:
    """Nobody is watching."""


def _status_counter(status: Status, text: str) -> Callable[[int], None]:
    """Show the count on a spinner, at most every _EVENT_INTERVAL."""
    last = 0.0

    def counted(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _EVENT_INTERVAL:
            last = now
            status.update(text.format(done))

    return counted


def _size(size: int) -> str:
    from pybootc.ostree.gi import GLib

    return str(GLib.format_size(size))


class Progress:
    """Where a deployment's progress goes: an fd for JSON lines, a terminal, both or none."""

    def __init__(self, fd: int | None, image: str = "", *, terminal: bool = False) -> None:
        self._out: TextIO | None = None
        self._image = image
        self._done = 0
        self._fetch: _Fetch | None = None
        self._console: Console | None = None
        self._bars: RichProgress | None = None
        self._bar_tasks: dict[str, TaskID] = {}
        if terminal:
            from rich.console import Console

            self._console = Console(stderr=True)
        if fd is None:
            return
        try:
            self._out = os.fdopen(fd, "w", buffering=1, closefd=False)
            self._emit({"type": "Start", "version": PROTOCOL_VERSION})
        except OSError as err:
            raise BootcError(f"--progress-fd {fd}: {err.strerror}") from None

    def for_image(self, image: str) -> Progress:
        self._image = image
        return self

    def _emit(self, event: dict[str, object]) -> None:
        if self._out is not None:
            self._out.write(json.dumps(event, separators=(",", ":")) + "\n")

    # --- fetching ---------------------------------------------------------------------

    def layers(self, states: Sequence[tuple[str, int, bool]], line: str) -> None:
        """The image's layers (digest, size, present) and upstream's line about them:
        printed on a terminal before anything is fetched."""
        if self._out is None and self._console is None:
            return  # NO_PROGRESS, shared by every caller: it keeps no state
        needed = {d: _Layer(d, size) for d, size, present in states if not present}
        cached = [size for _, size, present in states if present]
        self._fetch = _Fetch(needed, len(cached), sum(cached))
        if self._console is not None:
            self._console.print(line, highlight=False)

    @contextmanager
    def fetching(self) -> Iterator[None]:
        """Fetching the layers announced by `layers`: bars on a terminal, ProgressBytes
        events on the fd, a final event when all have arrived."""
        with ExitStack() as stack:
            if self._console is not None and self._fetch is not None and self._fetch.layers:
                stack.enter_context(self._terminal_bars())
            self._bytes_event(force=True)
            yield
            if self._fetch is not None:
                for layer in self._fetch.layers.values():
                    self.fetched(layer.digest, layer.total)
                self._bytes_event(force=True)

    def fetched(self, digest: str, done: int) -> None:
        """`done` bytes of the layer `digest` have arrived (it only grows)."""
        fetch = self._fetch
        if fetch is None or digest not in fetch.layers:
            return
        with fetch.lock:
            layer = fetch.layers[digest]
            grown = min(max(done, layer.done), layer.total)
            complete = grown >= layer.total > layer.done
            layer.done = grown
            if self._bars is not None:
                self._bars.update(self._bar_tasks[digest], completed=grown)
                self._bars.update(self._bar_tasks[""], completed=fetch.done)
        self._bytes_event(force=complete)

    def _bytes_event(self, *, force: bool) -> None:
        fetch = self._fetch
        if self._out is None or fetch is None:
            return
        with fetch.lock:
            now = time.monotonic()
            if not force and now - fetch.last_event < _EVENT_INTERVAL:
                return
            fetch.last_event = now
            subtasks = [
                {
                    "subtask": "layer",
                    "description": "Layer:",
                    "id": layer.digest,
                    "bytesCached": 0,
                    "bytes": layer.done,
                    "bytesTotal": layer.total,
                }
                for layer in fetch.layers.values()
            ]
            event = {
                "type": "ProgressBytes",
                "task": FETCH_TASK,
                "description": f"Fetching {self._image}",
                "id": self._image,
                "bytesCached": fetch.cached_bytes,
                "bytes": fetch.done,
                "bytesTotal": fetch.total,
                "stepsCached": fetch.cached_layers,
                "steps": fetch.finished,
                "stepsTotal": len(fetch.layers),
                "subtasks": subtasks,
            }
        self._emit(event)

    @contextmanager
    def _terminal_bars(self) -> Iterator[None]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        assert self._fetch is not None
        bars = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self._console,
            transient=True,
        )
        started = time.monotonic()
        with bars:
            for digest, layer in self._fetch.layers.items():
                short = digest.removeprefix("sha256:")[:12]
                self._bar_tasks[digest] = bars.add_task(f"Layer {short}", total=layer.total)
            self._bar_tasks[""] = bars.add_task("Fetching", total=self._fetch.total)
            self._bars = bars
            try:
                yield
            finally:
                self._bars = None
        # Upstream's summary line once the layers are in.
        done, seconds = self._fetch.done, max(time.monotonic() - started, 0.001)
        if self._console is not None:
            self._console.print(
                f"Fetched layers: {_size(done)} in {seconds:.0f} seconds"
                f" ({_size(int(done / seconds))}/s)",
                highlight=False,
            )

    # --- steps ------------------------------------------------------------------------

    def _steps(self, name: str, *, completed: bool) -> None:
        self._emit(
            {
                "type": "ProgressSteps",
                "task": TASK,
                "description": f"Deploying {self._image}",
                "id": self._image,
                "stepsCached": 0,
                "steps": self._done,
                "stepsTotal": len(STEPS),
                "subtasks": [
                    {
                        "subtask": name,
                        "description": STEPS[name],
                        "id": self._image,
                        "completed": completed,
                    }
                ],
            }
        )

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[int], None]]:
        """A step begins and, at the end of the block, is complete. The block is given
        a function to say how many of the step's things (UNITS) are done so far; on a
        terminal the spinner shows it."""
        self._steps(name, completed=False)
        with ExitStack() as stack:
            counted: Callable[[int], None] = _ignore_count
            if self._console is not None and name != "pulling":
                status = stack.enter_context(self._console.status(f"{STEPS[name]}..."))
                unit = UNITS.get(name)
                if unit is not None:
                    counted = _status_counter(status, f"{STEPS[name]}... {{}} {unit}")
            yield counted
        self._done += 1
        self._steps(name, completed=True)

    def pruned(self, pruned: Pruned, freed: int) -> None:
        """After GC, on a terminal, upstream's line: images and layers that went, and
        the bytes the repo's prune freed."""
        if self._console is not None and (pruned.images or pruned.layers or freed):
            self._console.print(
                f"Pruned images: {len(pruned.images)} (layers: {pruned.layers}, "
                f"objsize: {_size(freed)})",
                highlight=False,
            )


NO_PROGRESS = Progress(None)

"""`--progress-fd N`: JSON lines about a deployment's steps, as bootc's progress-v0.

A Start event, then a ProgressSteps event as each step begins and ends: pulling,
flattening, committing, deploying. Without a descriptor nothing is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from pybootc.errors import BootcError

PROTOCOL_VERSION = "0.1.0"
TASK = "deploying"
STEPS = {
    "pulling": "Pulling the image into bootc's storage",
    "flattening": "Flattening and post-processing the layers",
    "committing": "Committing to OSTree",
    "deploying": "Deploying",
}


class Progress:
    def __init__(self, fd: int | None, image: str = "") -> None:
        self._out: TextIO | None = None
        self._image = image
        self._done = 0
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
    def step(self, name: str) -> Iterator[None]:
        self._steps(name, completed=False)
        yield
        self._done += 1
        self._steps(name, completed=True)


NO_PROGRESS = Progress(None)

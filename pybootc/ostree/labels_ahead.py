"""SELinux labels looked up ahead on the second core, from the far end of the order in
which the labeller asks for them.

A label lookup is libselinux matching the path against the policy's file contexts, one
regular expression after another: 120-300 µs a path with Debian's reference policy and
libselinux 3.4, a large part of what labels add to a fresh import. The labeller walks
the tree in an order known before it starts, so a thread takes that order from its end
while the labeller takes it from its start, and they meet about half-way. PyGObject
gives the GIL up around each call into C, so the two run at once.

A label depends on the path and the file type only: libselinux masks the mode with
S_IFMT (3.4 and 3.8 alike) before it compares it with a rule's. So the thread looks up
the type the tree says, and the labeller takes its answer only where the entry turns
out to be of that type (a symlink read back from a layer's stored tree is planned as a
regular file, and looked up by the labeller itself).
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Sequence
from types import TracebackType

from pybootc.ostree.gi import GLib, OSTree

# A few lookups (an update that takes most directories over) are the labeller's alone.
_WORTH_A_THREAD = 256


class _NotYet:
    """What a lookup the thread has not made yet holds."""


_NOT_YET = _NotYet()


def lookup(sepolicy: OSTree.SePolicy, path: str, mode: int) -> str | None:
    """The label the policy gives `path` of `mode` (only its type counts); None where
    it gives none."""
    _, label = sepolicy.get_label(path, mode, None)
    return None if label is None else str(label)


class LabelsAhead:
    """Labels for `planned` (paths and file types, in the order they will be asked for),
    looked up ahead from the end by a thread while the block runs."""

    def __init__(self, sepolicy: OSTree.SePolicy, planned: Sequence[tuple[str, int]]) -> None:
        self._sepolicy = sepolicy
        self._planned = planned
        self._found: list[str | _NotYet | None] = [_NOT_YET] * len(planned)
        self._next = 0  # where the labeller is in `planned`
        self._stop = False
        self._thread: threading.Thread | None = None
        self.taken = 0  # answers the labeller took from the thread

    def __enter__(self) -> LabelsAhead:
        if len(self._planned) >= _WORTH_A_THREAD:
            self._thread = threading.Thread(target=self._look_ahead, name="labels-ahead")
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def _look_ahead(self) -> None:
        for index in range(len(self._planned) - 1, -1, -1):
            # Past the labeller's place, everything is the labeller's.
            if self._stop or index < self._next:
                return
            path, kind = self._planned[index]
            try:
                self._found[index] = lookup(self._sepolicy, path, kind)
            except GLib.Error:
                # The labeller meets the same failure when it gets there, and reports it
                # as any lookup's.
                return

    def label(self, path: str, mode: int) -> str | None:
        """The label of `path` of `mode`: the thread's answer where it has made it for
        this path and type, else looked up now."""
        index = self._next
        if index < len(self._planned) and self._planned[index][0] == path:
            # Moved on before looking: from here the thread leaves this one alone.
            self._next = index + 1
            found = self._found[index]
            if not isinstance(found, _NotYet) and self._planned[index][1] == stat.S_IFMT(mode):
                self.taken += 1
                return found
        return lookup(self._sepolicy, path, mode)

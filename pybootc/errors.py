"""The one exception type users see: a message plus the context it happened in.

`cli.main` renders it as `error: context: context: cause` and exits 1, the way
bootc (anyhow) does. Library code raises it and never prints or exits itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

# Control characters (C0, DEL, C1): they would break the one error line, or drive the
# terminal, and a message can quote anything (a registry's words, a user's argument).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BootcError(Exception):
    """A failure worth one clear line to the user."""

    def __init__(self, message: str, *, context: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def with_context(self, outer: str) -> BootcError:
        """Return the same failure wrapped in one more (outer) context."""
        err = BootcError(self.message, context=(outer, *self.context))
        err.__cause__ = self.__cause__
        return err

    def __str__(self) -> str:
        return ": ".join((*self.context, self.message))

    def line(self) -> str:
        """The failure as one line to print: control characters escaped as repr()
        escapes them (a newline as `\\n`)."""
        return _CONTROL.sub(lambda found: repr(found[0])[1:-1], str(self))


@contextmanager
def error_context(what: str) -> Iterator[None]:
    """Prefix any BootcError raised inside with `what`, like anyhow's `.context()`."""
    try:
        yield
    except BootcError as err:
        raise err.with_context(what) from err.__cause__

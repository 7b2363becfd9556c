"""The two ways an image becomes an OSTree commit, chosen per deployment."""

from __future__ import annotations

import enum


class Backend(enum.StrEnum):
    """Where a deployment's image came through; recorded in its origin."""

    OSTREE = "ostree"
    CONTAINER = "container"

    @property
    def store(self) -> str:
        """The `store` field of a BootEntry in `bootc status`."""
        return "ostreeContainer" if self is Backend.OSTREE else "containerStorage"

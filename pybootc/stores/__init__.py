"""Image stores: the two ways an image's layers become an OSTree commit, chosen per
deployment.

- `protocol.py`: what every store does (`ImageStore`), and the values passed around.
- `ostree.py`, `container.py`: the two stores; `registry.py` maps `Backend` to them.
- `pipeline.py`: prepare, fetch, flatten, post-process and commit, for any store.
- `commit.py`: the post-processing and commit both share.
"""

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

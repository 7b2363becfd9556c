"""Which store each backend is: the one place that maps `Backend` to its class."""

from __future__ import annotations

from pathlib import Path

from pybootc.ostree.gi import OSTree
from pybootc.stores import Backend
from pybootc.stores.container import ContainerStore
from pybootc.stores.ostree import OstreeStore
from pybootc.stores.protocol import ImageStore

STORES: dict[Backend, type[ImageStore]] = {
    Backend.OSTREE: OstreeStore,
    Backend.CONTAINER: ContainerStore,
}


def store_for(backend: Backend, sysroot_path: Path, repo: OSTree.Repo | None) -> ImageStore:
    """The store of `backend` for the sysroot at `sysroot_path` (`repo` None before
    an install has made one)."""
    return STORES[backend](sysroot_path, repo)


def all_stores(sysroot_path: Path, repo: OSTree.Repo | None) -> list[ImageStore]:
    """Every store: a sysroot may hold deployments of both backends."""
    return [store_for(backend, sysroot_path, repo) for backend in Backend]

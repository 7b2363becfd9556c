"""Fixtures: the loopback registry and the kernel oracle, one of each per worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pybootc.stores.containers_storage import ContainersStorage
from tests.support import LOGIN, Oracle, Registry, running_registry

# No property test fails for being slow: a fresh CI machine, both cores busy and no
# example database yet, once took 1.1 s for a manifest strategy's first example, and
# speed belongs in `make bench`. What each example checks is unchanged.
settings.register_profile("pybootc", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pybootc")


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with running_registry() as found:
        yield found


@pytest.fixture(scope="session")
def private_registry() -> Iterator[Registry]:
    """A second loopback registry, which only LOGIN may use."""
    with running_registry(LOGIN) as found:
        yield found


@pytest.fixture(scope="session")
def oracle() -> Iterator[Oracle]:
    found = Oracle(Path(tempfile.mkdtemp(prefix="pybootc-oracle-", dir="/var/tmp")))
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on a tmpfs of its own: where a sysroot gets installed."""
    from tests.backend_support import empty_sysroot_dir

    with empty_sysroot_dir(tmp_path / "mnt") as path:
        yield path


@pytest.fixture
def other_target(tmp_path: Path) -> Iterator[Path]:
    """A second empty sysroot directory on a tmpfs of its own, like `target`."""
    from tests.backend_support import empty_sysroot_dir

    with empty_sysroot_dir(tmp_path / "other-mnt") as path:
        yield path


@pytest.fixture
def host_storage(tmp_path: Path) -> Iterator[ContainersStorage]:
    """The "host's default storage" for this test: CONTAINERS_STORAGE_CONF points at it."""
    # podman refuses a runroot path longer than 50 characters.
    storage = ContainersStorage(
        tmp_path / "host-storage", Path(tempfile.mkdtemp(prefix="hs-", dir="/run"))
    )
    conf = tmp_path / "storage.conf"
    conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{storage.root}"\n'
        f'runroot = "{storage.runroot}"\n'
    )
    previous = os.environ.get("CONTAINERS_STORAGE_CONF")
    os.environ["CONTAINERS_STORAGE_CONF"] = str(conf)
    try:
        yield storage
    finally:
        subprocess.run(["podman", "system", "reset", "--force"], capture_output=True, check=False)
        shutil.rmtree(storage.runroot, ignore_errors=True)
        if previous is None:
            del os.environ["CONTAINERS_STORAGE_CONF"]
        else:
            os.environ["CONTAINERS_STORAGE_CONF"] = previous


# Fixtures that mount file systems, run podman or skopeo, or start the registry.
ROOT_FIXTURES = frozenset(
    {"registry", "private_registry", "oracle", "target", "other_target", "host_storage"}
)
ROOT_MARKERS = ("boot", "oracle", "registry")
# Modules that mount, set up loop devices, chown or mknod, or (lint) write caches into
# the checkout, without one of those fixtures.
ROOT_MODULES = frozenset(
    {
        "tests.test_breakouts",
        "tests.test_disk_space",
        "tests.test_flatten_cli",
        "tests.test_install_disk",
        "tests.test_lint",
        "tests.test_postprocess",
        "tests.test_sysroot",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `root` every test that needs root and the real tools (`make test` runs them
    all; `pytest -m "not root"` runs the rest anywhere)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = getattr(item.module, "__name__", "") if hasattr(item, "module") else ""
        if (
            fixtures & ROOT_FIXTURES
            or module in ROOT_MODULES
            or any(item.get_closest_marker(m) for m in ROOT_MARKERS)
        ):
            item.add_marker(pytest.mark.root)

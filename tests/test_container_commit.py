"""What the container backend writes: commit metadata, refs that survive pruning,
and a status document that validates against bootc's schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pybootc.host.yaml_text import load_yaml
from pybootc.ostree.repo import commit_timestamp, list_refs, read_commit_metadata
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from tests.backend_support import bootc, install, ok, publish
from tests.support import Registry, host_schema

pytestmark = pytest.mark.registry


def _install(registry: Registry, target: Path, tmp_path: Path, version: str, repo: str) -> str:
    image = publish(
        registry, tmp_path, sample_image(version, created="2026-03-04T05:06:07Z"), repo=repo
    )
    ok(install(target, image.docker))
    return image.docker


def test_commit_carries_ostree_ext_metadata(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    image = _install(registry, target, tmp_path, "4.2", "pybootc/meta")
    sysroot = Sysroot.open(target)
    checksum = sysroot.deployments()[0].checksum
    meta = read_commit_metadata(sysroot.repo, checksum)
    manifest = json.loads(str(meta["ostree.manifest"]))
    config = json.loads(str(meta["ostree.container.image-config"]))
    assert meta["version"] == "4.2"
    assert str(meta["ostree.manifest-digest"]).startswith("sha256:")
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == "4.2"
    # Canonical JSON: compact with sorted keys.
    assert str(meta["ostree.manifest"]) == json.dumps(
        manifest, sort_keys=True, separators=(",", ":")
    )
    # The commit is dated by the image's `created`.
    assert commit_timestamp(sysroot.repo, checksum) == 1772600767
    status = json.loads(ok(bootc("status", "--json", sysroot=target)))
    assert status["status"]["staged"]["image"]["imageDigest"] == meta["ostree.manifest-digest"]
    assert image.endswith(status["spec"]["image"]["image"])


def test_pruning_never_loses_a_deployed_commit(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    _install(registry, target, tmp_path, "1.0", "pybootc/prune-a")
    other = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/prune-b")
    ok(bootc("switch", other.docker, sysroot=target))  # drops the first image's ref
    sysroot = Sysroot.open(target)
    rollback = sysroot.deployments()[1].checksum
    assert rollback not in list_refs(sysroot.repo, "ostree/container/image").values()
    sysroot.cleanup()
    assert read_commit_metadata(sysroot.repo, rollback)["version"] == "1.0"
    ok(bootc("rollback", sysroot=target))
    assert Sysroot.open(target).deployments()[0].checksum == rollback


def test_status_documents_validate_against_bootcs_schema(
    registry: Registry, target: Path, tmp_path: Path
) -> None:
    _install(registry, target, tmp_path, "1.0", "pybootc/schema")
    schema = host_schema(with_container_store=True)
    as_json = json.loads(ok(bootc("status", "--format", "json", sysroot=target)))
    # Read as serde_yaml (YAML 1.2) reads it: a YAML 1.1 reader takes the plain
    # timestamp upstream writes for a date-time, not a string.
    as_yaml = load_yaml(ok(bootc("status", "--format", "yaml", sysroot=target)))
    for document in (as_json, as_yaml):
        jsonschema.validate(document, schema)
    assert as_json["status"]["staged"]["store"] == "containerStorage"
    # Upstream's schema differs only in that store value.
    as_json["status"]["staged"]["store"] = "ostreeContainer"
    jsonschema.validate(as_json, host_schema(with_container_store=False))


def test_status_of_an_empty_sysroot(target: Path) -> None:
    from pybootc.ostree.sysroot import initialize

    initialize(target, "default")
    assert json.loads(ok(bootc("status", "--json", sysroot=target))) == json.loads(
        Path(__file__)
        .resolve()
        .parents[2]
        .joinpath("shared/reference/upstream-bootc/spec-v1-null.json")
        .read_text()
    )
    assert ok(bootc("status", "--format", "humanreadable", sysroot=target)) == (
        "System is not deployed via bootc.\n"
    )

"""Multi-architecture images: this machine's image is chosen from an index as
containers/image chooses it, and the signature policy judges that image, by digest,
which both backends then fetch. (skopeo's copy of an index judges the image it picks
from it: judging the index while fetching another pick would let an image through
that the policy never saw.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.oci.imgref import ImageReference
from pybootc.oci.metadata import _platform_manifest, host_architecture
from pybootc.ostree.ext_format import MANIFEST_DIGEST_KEY
from pybootc.ostree.repo import read_commit_metadata
from pybootc.ostree.sysroot import Sysroot
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OCI_INDEX, OciLayout, push
from tests.backend_support import install, ok, recording_skopeo
from tests.support import Registry

ARCH = host_architecture()
REF = ImageReference.parse("docker://example.com/os:latest")


def entry(digest: str, platform: object) -> dict[str, object]:
    found: dict[str, object] = {"mediaType": "m", "digest": digest, "size": 1}
    if platform is not ...:
        found["platform"] = platform
    return found


def chosen(*entries: dict[str, object]) -> str:
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    return _platform_manifest(REF, raw.encode()).rsplit("@", 1)[1]


def test_the_first_linux_entry_for_this_architecture_is_chosen() -> None:
    assert (
        chosen(
            entry("sha256:other", {"architecture": "s390x", "os": "linux"}),
            entry("sha256:no-os", {"architecture": ARCH}),
            entry("sha256:windows", {"architecture": ARCH, "os": "windows"}),
            entry("sha256:null", None),
            entry("sha256:mine", {"architecture": ARCH, "os": "linux"}),
            entry("sha256:later", {"architecture": ARCH, "os": "linux"}),
        )
        == "sha256:mine"
    )


def test_without_one_the_first_entry_naming_no_platform_is_chosen() -> None:
    assert (
        chosen(
            entry("sha256:no-os", {"architecture": ARCH}),
            entry("sha256:absent", ...),
            entry("sha256:null", None),
        )
        == "sha256:absent"
    )


@pytest.mark.parametrize(
    "entries",
    [
        [entry("sha256:other", {"architecture": "s390x", "os": "linux"})],
        [entry("sha256:no-os", {"architecture": ARCH})],
        [entry("sha256:odd", "amd64"), "not an entry"],
        [],
    ],
)
def test_an_index_with_nothing_for_this_machine_is_one_error(entries: list[object]) -> None:
    raw = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    with pytest.raises(BootcError) as raised:
        _platform_manifest(REF, raw)
    assert str(raised.value) == f"Image has no manifest for architecture {ARCH}"


def push_index(registry: Registry, workdir: Path) -> tuple[str, str, str]:
    """An index whose first entry names this architecture but no OS (no image
    containers/image would pick), then this machine's image: its reference, and the
    manifest digests of both."""
    layout = OciLayout(workdir / "multi")
    wrong = layout.add_image("wrong", sample_image("6.6"))
    right = layout.add_image("right", sample_image("7.7"))
    index = json.loads((layout.path / "index.json").read_text())
    found = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}

    def listed(tag: str, platform: dict[str, str]) -> dict[str, object]:
        manifest = found[tag]
        return {
            "mediaType": manifest["mediaType"],
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": platform,
        }

    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                listed("wrong", {"architecture": ARCH}),
                listed("right", {"architecture": ARCH, "os": "linux"}),
            ],
        }
    ).encode()
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": layout.put_blob(raw),
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout.path / "index.json").write_text(json.dumps(index))
    ref = f"{registry.address}/pybootc/multiarch:multi"
    push(layout.ref("multi"), f"docker://{ref}", "--all")
    return ref, wrong, right


@pytest.mark.registry
@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_the_image_judged_is_the_image_deployed(
    registry: Registry, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    ref, wrong, right = push_index(registry, tmp_path)
    skopeo_calls = recording_skopeo(tmp_path / "bin", monkeypatch)
    ok(install(target, f"docker://{ref}", backend=backend))
    sysroot = Sysroot.open(target)
    deployed = read_commit_metadata(sysroot.repo, sysroot.deployments()[0].checksum)
    assert deployed[MANIFEST_DIGEST_KEY] == right != wrong
    repository = ref.rsplit(":", 1)[0]
    calls = skopeo_calls()
    judged = [c.split()[-2] for c in calls if "pybootc-policy-check" in c]
    assert judged == [f"docker://{repository}@{right}"], calls
    # The config read from the registry is that image's too (not the tag's, again).
    configs = [c.split()[-1] for c in calls if "inspect" in c and "--config" in c]
    from_registry = {c for c in configs if c.startswith("docker://")}
    assert from_registry == {f"docker://{repository}@{right}"}, calls

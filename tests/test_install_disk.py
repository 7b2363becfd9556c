"""`bootc install to-disk --via-loopback FILE`: a GPT disk image with an ext4 root.

The disk is only ever a file here, used through a loop device; the boot test boots
one. Bad input leaves the file exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from pybootc.commands.install_disk import ROOT_PARTITION_TYPE
from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout
from tests.backend_support import bootc, ok, one_error_line


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OciLayout:
    found = OciLayout(tmp_path_factory.mktemp("to-disk") / "oci")
    found.add_image("v1", sample_image("1.0"))
    return found


def disk_file(path: Path, size: str = "2G") -> Path:
    subprocess.run(["truncate", "-s", size, path], check=True)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_a_disk_image_gets_a_gpt_an_ext4_root_and_a_boot_entry(
    layout: OciLayout, tmp_path: Path, backend: str
) -> None:
    disk = disk_file(tmp_path / "disk.img")
    out = ok(
        bootc(
            "install",
            "to-disk",
            "--via-loopback",
            "--backend",
            backend,
            "--source-imgref",
            layout.ref("v1"),
            "--karg",
            "console=ttyS0",
            str(disk),
        )
    )
    assert out.startswith("Queued for next boot: ")
    table = json.loads(
        subprocess.run(["sfdisk", "--json", disk], capture_output=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "gpt"
    (partition,) = table["partitions"]
    assert partition["type"] == ROOT_PARTITION_TYPE and partition["name"] == "root"
    # Mounted at the partition's offset: the kernel here may not scan partition tables.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    offset = int(partition["start"]) * int(table.get("sectorsize", 512))
    probe = subprocess.run(
        ["blkid", "-p", "-O", str(offset), "-o", "export", disk],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(line.split("=", 1) for line in probe.split())
    assert fields["TYPE"] == "ext4" and fields["LABEL"] == "root"
    subprocess.run(["mount", "-o", f"ro,loop,offset={offset}", disk, mnt], check=True)
    try:
        (entry,) = (mnt / "boot/loader/entries").glob("*.conf")
        options = next(
            line.split()[1:]
            for line in entry.read_text().splitlines()
            if line.startswith("options ")
        )
        assert f"root=UUID={fields['UUID']}" in options
        assert "rw" in options and "console=ttyS0" in options
        assert list((mnt / "ostree/deploy/default/deploy").glob("*.0"))
    finally:
        subprocess.run(["umount", mnt], check=True)
    # Installed once, the disk is refused a second time without --wipe.
    before = digest(disk)
    line = one_error_line(
        bootc(
            "install", "to-disk", "--via-loopback", "--source-imgref", layout.ref("v1"), str(disk)
        )
    )
    assert "Detected existing partitions or filesystems" in line and "--wipe" in line
    assert digest(disk) == before


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda p: None, ["--via-loopback"], "does not exist (create it"),
        (lambda p: disk_file(p, "100M"), ["--via-loopback"], "smaller than 1 GiB"),
        (disk_file, [], "installs no boot loader"),
        (lambda p: p.mkdir(), ["--via-loopback"], "needs a regular file"),
    ],
)
def test_bad_targets_are_refused_and_left_alone(
    layout: OciLayout, tmp_path: Path, setup: object, extra: list[str], message: str
) -> None:
    disk = tmp_path / "disk.img"
    setup(disk)  # type: ignore[operator]
    before = digest(disk) if disk.is_file() else None
    line = one_error_line(
        bootc("install", "to-disk", *extra, "--source-imgref", layout.ref("v1"), str(disk))
    )
    assert message in line, line
    assert (digest(disk) if disk.is_file() else None) == before
    assert (
        subprocess.run(
            ["losetup", "--associated", disk], check=False, capture_output=True, text=True
        ).stdout
        == ""
    )


# What only the install itself would find wrong: its options, the image's tag, and the
# start of the error line.
BEFORE_WRITING = {
    "stateroot": (["--stateroot", "a/b"], "v1", "error: Invalid stateroot name: 'a/b'"),
    "karg": (["--karg", 'a="b'], "v1", "error: Invalid kernel argument 'a=\"b' from --karg"),
    "no image": ([], "nosuch", "error: Fetching manifest of oci:"),
}


@pytest.mark.parametrize("backend", ["ostree", "container"])
@pytest.mark.parametrize("case", sorted(BEFORE_WRITING))
def test_what_only_the_install_would_find_is_refused_before_the_disk_is_written(
    layout: OciLayout, tmp_path: Path, case: str, backend: str
) -> None:
    """The image, the stateroot and the kargs are checked before the disk is
    partitioned: a retry with them put right needs no --wipe."""
    extra, tag, message = BEFORE_WRITING[case]
    disk = disk_file(tmp_path / "disk.img")
    before = digest(disk)
    argv = ["install", "to-disk", "--via-loopback", "--backend", backend, *extra]
    line = one_error_line(bootc(*argv, "--source-imgref", layout.ref(tag), str(disk)))
    assert line.startswith(message), line
    assert digest(disk) == before


def test_target_imgref_is_what_the_installed_system_follows(
    layout: OciLayout, target: Path
) -> None:
    out = ok(
        bootc(
            "install",
            "to-filesystem",
            "--source-imgref",
            layout.ref("v1"),
            "--target-imgref",
            "ostree-unverified-registry:quay.io/example/os:stable",
            str(target),
        )
    )
    assert out.startswith("Queued for next boot: quay.io/example/os:stable\n")
    status = json.loads(ok(bootc("status", "--format", "json", sysroot=target)))
    # Unverified: no signature named, as upstream.
    assert status["spec"]["image"] == {
        "image": "quay.io/example/os:stable",
        "transport": "registry",
    }
    assert status["status"]["staged"]["image"]["version"] == "1.0"


def test_a_failed_install_is_one_error_and_leaves_no_mount_or_loop_device(
    layout: OciLayout, tmp_path: Path
) -> None:
    # The layout loses a layer blob: the import fails with the filesystem mounted, and
    # the Sysroot the failure's traceback still holds keeps that mount busy.
    broken = tmp_path / "oci"
    subprocess.run(["cp", "-a", layout.path, broken], check=True)
    index = json.loads((broken / "index.json").read_text())
    manifest_blob = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((broken / "blobs" / "sha256" / manifest_blob).read_text())
    layer = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    (broken / "blobs" / "sha256" / layer).unlink()
    disk = disk_file(tmp_path / "disk.img")

    line = one_error_line(
        bootc(
            "install", "to-disk", "--via-loopback", "--source-imgref", f"oci:{broken}:v1", str(disk)
        )
    )

    assert line.startswith(f"error: Installing to disk {disk}: ") and layer in line, line
    # A mounted loop device could not be let go: no loop device left means no mount either.
    associated = subprocess.run(
        ["losetup", "--associated", disk], check=False, capture_output=True, text=True
    )
    assert associated.stdout == ""

"""The harness loader orders BLS entries as the spec and systemd-boot do (pure logic, no qemu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.boot.loader import BootEntry, entries_in, parse_entry, sort_entries, version_compare


def names(entries: list[BootEntry]) -> list[str]:
    return [e.filename for e in entries]


def test_libostree_entries_put_the_highest_number_first() -> None:
    entries = [
        BootEntry("ostree-1-default.conf", version="1"),
        BootEntry("ostree-3-default.conf", version="3"),
        BootEntry("ostree-2-default.conf", version="2"),
    ]
    assert names(sort_entries(entries)) == [
        "ostree-3-default.conf",
        "ostree-2-default.conf",
        "ostree-1-default.conf",
    ]


def test_file_names_compare_as_versions_not_as_text() -> None:
    entries = [BootEntry("ostree-9-a.conf"), BootEntry("ostree-10-a.conf")]
    assert names(sort_entries(entries))[0] == "ostree-10-a.conf"


def test_entries_with_a_sort_key_come_first_by_key_then_machine_id_then_newest() -> None:
    entries = [
        BootEntry("z-no-key.conf", version="100"),
        BootEntry("b-old.conf", sort_key="debian", machine_id="m1", version="5"),
        BootEntry("b-new.conf", sort_key="debian", machine_id="m1", version="10"),
        BootEntry("a.conf", sort_key="arch", machine_id="m9", version="1"),
        BootEntry("c.conf", sort_key="debian", machine_id="m0", version="1"),
    ]
    assert names(sort_entries(entries)) == [
        "a.conf",
        "c.conf",
        "b-new.conf",
        "b-old.conf",
        "z-no-key.conf",
    ]


def test_a_boot_counting_suffix_does_not_change_the_order() -> None:
    entries = [BootEntry("ostree-1-a+3.conf"), BootEntry("ostree-2-a+0-3.conf")]
    assert names(sort_entries(entries))[0] == "ostree-2-a+0-3.conf"


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1", "2"), ("9", "10"), ("1.2", "1.10"), ("1~rc1", "1"), ("1a", "1.1"), ("a", "b")],
)
def test_version_compare(older: str, newer: str) -> None:
    assert version_compare(older, newer) == -1
    assert version_compare(newer, older) == 1
    assert version_compare(newer, newer) == 0


def test_parse_entry_reads_libostree_s_keys() -> None:
    entry = parse_entry(
        "ostree-1-default.conf",
        "title Debian GNU/Linux 12 (bookworm) (ostree:0)\n"
        "version 1\n"
        "options root=UUID=x rw ostree=/ostree/boot.1/default/abc/0\n"
        "linux /ostree/default-abc/vmlinuz-6.1.0\n"
        "initrd /ostree/default-abc/initramfs-6.1.0.img\n",
    )
    assert entry.title == "Debian GNU/Linux 12 (bookworm) (ostree:0)"
    assert entry.version == "1"
    assert entry.linux == "/ostree/default-abc/vmlinuz-6.1.0"
    assert entry.initrd == ("/ostree/default-abc/initramfs-6.1.0.img",)
    assert entry.options.endswith("ostree=/ostree/boot.1/default/abc/0")
    assert entry.sort_key is None


def test_repeated_initrd_and_options_lines_all_count() -> None:
    entry = parse_entry("x.conf", "linux /k\ninitrd /a\ninitrd /b\noptions a=1\noptions b=2\n")
    assert entry.initrd == ("/a", "/b")
    assert entry.options == "a=1 b=2"


def test_entries_in_follows_the_loader_symlink(tmp_path: Path) -> None:
    (tmp_path / "loader.1" / "entries").mkdir(parents=True)
    (tmp_path / "loader").symlink_to("loader.1")
    for n in (1, 2):
        (tmp_path / "loader.1" / "entries" / f"ostree-{n}-d.conf").write_text(f"version {n}\n")
    assert names(entries_in(tmp_path)) == ["ostree-2-d.conf", "ostree-1-d.conf"]

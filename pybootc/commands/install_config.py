"""bootc's install configuration: `bootc/install/*.toml` under /usr/lib, /usr/local/lib,
/etc and /run, merged as upstream merges them, and printed by `install
print-configuration`.

Upstream runs `bootc install` inside the image, so the files it reads are the image's;
pybootc reads them from the root it runs in, which is the same thing when it runs there.
A file in a later directory replaces one of the same name in an earlier one; the files
are then applied in name order: a later value replaces an earlier one, `kargs` and
`karg-deletes` add up, and the tables (`filesystem`, `ostree`, `bootupd`) merge key by
key. A file whose `match-architectures` leaves this machine out is skipped.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pybootc.errors import BootcError
from pybootc.ostree.kargs import host_architecture

log = logging.getLogger(__name__)

# liboverdrop's order: a later base overrides a file of the same name in an earlier one.
CONFIG_BASES = ("usr/lib", "usr/local/lib", "etc", "run")
CONFIG_SUBDIR = "bootc/install"

# Every key of upstream's `[install]` table, as print-configuration shows them.
_SCALARS = (
    "block",
    "boot-mount-spec",
    "bootloader",
    "discoverable-partitions",
    "enforce-container-sigpolicy",
    "match-architectures",
    "root-fs-type",
    "root-mount-spec",
    "stateroot",
)
_TABLES = ("bootupd", "filesystem", "ostree")
_LISTS = ("kargs", "karg-deletes")
# Shown only with --all: bootc applies them itself.
_INTERNAL = _LISTS


def config_files(root: Path) -> list[Path]:
    """The configuration files under `root`, in the order they apply."""
    by_name: dict[str, Path] = {}
    for base in CONFIG_BASES:
        directory = root / base / CONFIG_SUBDIR
        if directory.is_dir():
            for path in directory.glob("*.toml"):
                by_name[path.name] = path
    return [by_name[name] for name in sorted(by_name)]


def _merge_table(into: dict[str, Any], table: Mapping[str, Any]) -> None:
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_table(into[key], value)
        else:
            into[key] = value


def _apply(config: dict[str, Any], path: Path, text: str) -> bool:
    """Merge the file's `[install]` table into `config`; whether it had one."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BootcError(f"Parsing {path}: {err}") from None
    except RecursionError:
        raise BootcError(f"Parsing {path}: it nests too deeply") from None
    install = document.get("install")
    if install is None:
        return False
    if not isinstance(install, dict):
        raise BootcError(f"Parsing {path}: [install] must be a table")
    arches = install.get("match-architectures")
    if arches is not None and host_architecture() not in arches:
        return False
    for key, value in install.items():
        if key in _LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BootcError(f"Parsing {path}: '{key}' must be a list of strings")
            config[key] = [*config.get(key, []), *value]
        elif key in _TABLES:
            if not isinstance(value, dict):
                raise BootcError(f"Parsing {path}: '{key}' must be a table")
            _merge_table(config.setdefault(key, {}), value)
        elif key in _SCALARS:
            config[key] = value
        else:
            log.warning("%s: Unknown key %s", json.dumps(str(path)), key)
    return True


def merged_configuration(files: Iterable[Path]) -> dict[str, Any] | None:
    """The merged `[install]` tables of `files`; None when no file has one."""
    config: dict[str, Any] = {}
    found = False
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise BootcError(f"Reading {path}: {err}") from None
        found = _apply(config, path, text) or found
    if not found:
        return None
    # As upstream's canonicalize(): the two spellings of the root filesystem agree
    # (the table's wins), and block devices are set up directly unless told otherwise.
    root_type = config.get("filesystem", {}).get("root", {}).get("type")
    if root_type is None and config.get("root-fs-type") is not None:
        config.setdefault("filesystem", {}).setdefault("root", {})["type"] = config["root-fs-type"]
    elif root_type is not None:
        config["root-fs-type"] = root_type
    config.setdefault("block", ["direct"])
    return config


def load(root: Path) -> dict[str, Any] | None:
    """The install configuration under `root`, merged; None if there is none."""
    return merged_configuration(config_files(root))


def print_configuration(root: Path, *, everything: bool) -> str:
    """What `bootc install print-configuration` prints: every key, null where unset, as
    canonical JSON (sorted keys, no spaces). `kargs` and `karg-deletes` only with
    `everything`, as upstream's --all."""
    config = load(root) or {}
    shown: dict[str, Any] = {key: config.get(key) for key in (*_SCALARS, *_TABLES)}
    if everything:
        shown.update({key: config[key] for key in _INTERNAL if key in config})
    return json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

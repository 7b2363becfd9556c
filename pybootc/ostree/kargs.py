"""Kernel arguments: checked before anything is written, and bootc's kargs.d.

A karg ends up on the `options` line of a BLS entry, which a boot loader reads up to
the end of the line. So no argument, from `--karg` or from an image, may hold a line
break, another control character or NUL: `a=b\\ninitrd /evil` would add an `initrd`
line of its own.

An image may carry `usr/lib/bootc/kargs.d/*.toml` files (`kargs = [...]`, and an
optional `match-architectures = [...]` in Rust's names). As upstream does, install
uses root kargs, then those files in name order, then `--karg`; switch and upgrade
start from the merge deployment's kargs and apply the difference between the old
image's files and the new one's, so kargs added by hand stay.
"""

from __future__ import annotations

import platform
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pybootc.errors import BootcError

KARGS_D = "usr/lib/bootc/kargs.d"

# platform.machine() names where Rust's std::env::consts::ARCH names differ.
_RUST_ARCH = {"ppc64le": "powerpc64", "ppc64": "powerpc64", "i686": "x86", "armv7l": "arm"}


def host_architecture() -> str:
    machine = platform.machine()
    return _RUST_ARCH.get(machine, machine)


def split(cmdline: str) -> list[str]:
    """Split on whitespace outside double quotes, as the kernel (and upstream) do."""
    params: list[str] = []
    current: list[str] = []
    quoted = False
    for char in cmdline:
        if char == '"':
            quoted = not quoted
        if char.isspace() and char.isascii() and not quoted:
            if current:
                params.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        params.append("".join(current))
    return params


def _bad_character(karg: str) -> str | None:
    for char in karg:
        # Cs: a byte that was not UTF-8, which Python keeps as a lone surrogate.
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"U+{ord(char):04X}"
    return None


def checked(source: str, kargs: Iterable[str]) -> list[str]:
    """Each of `kargs` split into parameters; one with a control character is refused."""
    params: list[str] = []
    for karg in kargs:
        bad = _bad_character(karg)
        if bad is not None:
            raise _invalid(source, karg, f"it holds a control character or non-UTF-8 byte ({bad})")
        if karg.count('"') % 2:
            raise _invalid(source, karg, "its double quotes are unbalanced")
        params += split(karg)
    return params


def _invalid(source: str, karg: str, why: str) -> BootcError:
    return BootcError(f"Invalid kernel argument {karg!r} from {source}: {why}")


def _key(param: str) -> str:
    # Dashes and underscores in a key are one character to the kernel.
    key, sep, value = param.partition("=")
    return key.replace("-", "_") + sep + value


def _same(a: str, b: str) -> bool:
    return _key(a) == _key(b)


def extended(kargs: Sequence[str], extra: Iterable[str]) -> list[str]:
    """`kargs` with each of `extra` appended unless exactly that parameter is there."""
    out = list(kargs)
    for param in extra:
        if not any(_same(param, have) for have in out):
            out.append(param)
    return out


def with_image_change(
    kargs: Sequence[str], old_image: Sequence[str], new_image: Sequence[str] | None
) -> list[str]:
    """The merge deployment's `kargs`, moved from the old image's kargs.d to the new
    one's: what the old image added and the new one lacks goes, what is new is added.
    A new image without kargs.d (None) keeps `kargs` and adds the old image's."""
    if new_image is None:
        return extended(kargs, old_image)
    removed = [p for p in old_image if not any(_same(p, q) for q in new_image)]
    added = [p for p in new_image if not any(_same(p, q) for q in old_image)]
    kept = [p for p in kargs if not any(_same(p, r) for r in removed)]
    return extended(kept, added)


@dataclass(frozen=True)
class KargsFile:
    """One kargs.d file, parsed."""

    kargs: tuple[str, ...]
    architectures: tuple[str, ...] | None

    def applies(self, architecture: str) -> bool:
        return self.architectures is None or architecture in self.architectures


def parse_kargs_file(name: str, text: str) -> KargsFile:
    where = f"{KARGS_D}/{name}"
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BootcError(f"Parsing {where}: {err}") from None
    except RecursionError:
        raise BootcError(f"Parsing {where}: it nests too deeply") from None
    unknown = sorted(set(document) - {"kargs", "match-architectures"})
    if unknown:
        raise BootcError(f"Parsing {where}: unknown field {unknown[0]!r}")
    if "kargs" not in document:
        raise BootcError(f"Parsing {where}: missing field 'kargs'")
    kargs = _strings(where, "kargs", document["kargs"])
    arches = document.get("match-architectures")
    return KargsFile(
        tuple(checked(where, kargs)),
        None if arches is None else tuple(_strings(where, "match-architectures", arches)),
    )


def _strings(where: str, field: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BootcError(f"Parsing {where}: {field!r} must be a list of strings")
    return list(value)


def image_kargs(files: Mapping[str, bytes] | None, architecture: str) -> list[str] | None:
    """The kargs an image's kargs.d gives this architecture, files in name order;
    None when the image has no kargs.d."""
    if files is None:
        return None
    params: list[str] = []
    for name in sorted(files):
        if name.endswith(".toml"):
            try:
                text = files[name].decode()
            except UnicodeDecodeError:
                raise BootcError(f"Parsing {KARGS_D}/{name}: not UTF-8") from None
            parsed = parse_kargs_file(name, text)
            if parsed.applies(architecture):
                params = extended(params, parsed.kargs)
    return params

"""`bootc edit`: change the host by editing its spec, as upstream allows.

Two changes are understood: a new `spec.image` (a switch) and a flipped
`spec.bootOrder` (a rollback). Anything else in the document is ignored, as
only the spec is the host's to change; both at once is refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pybootc import tools
from pybootc.commands.report import Report
from pybootc.commands.update import rollback, switch
from pybootc.errors import BootcError
from pybootc.host.build import build_host, ostree_reference
from pybootc.host.model import Host
from pybootc.ostree.sysroot import Sysroot
from pybootc.progress import NO_PROGRESS, Progress

# Upstream's choice when $EDITOR is unset (systemd's list): the first of these in /usr/bin.
BACKUP_EDITORS = ("nano", "vim", "vi")


def editor_command(environ: Mapping[str, str], bin_dir: Path = Path("/usr/bin")) -> list[str]:
    """The editor to run, as upstream picks it: $EDITOR (its words), else a backup
    editor found in `bin_dir`."""
    editor = environ.get("EDITOR", "")
    if not editor:
        found = next((bin_dir / name for name in BACKUP_EDITORS if (bin_dir / name).exists()), None)
        if found is None:
            raise BootcError("$EDITOR is unset, and no backup editor found")
        return [str(found)]
    try:
        words = shlex.split(editor)
    except ValueError as err:
        raise BootcError(f"The editor {editor!r}: {err}") from None
    if not words or shutil.which(words[0]) is None:
        raise BootcError(f"The editor {editor!r} ($EDITOR) was not found")
    return words


def _edited_in_editor(host: Host) -> str:
    words = editor_command(os.environ)
    editor = shlex.join(words)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="bootc-edit-") as draft:
        draft.write(host.to_yaml())
        draft.flush()
        if tools.run_passthrough([*words, draft.name]) != 0:
            raise BootcError(f"The editor ({editor}) failed")
        return Path(draft.name).read_text()


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as err:
        raise BootcError(
            f"Reading {where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None


def edit(sysroot_path: Path, filename: Path | None, *, progress: Progress = NO_PROGRESS) -> Report:
    host = build_host(Sysroot.open(sysroot_path))
    if filename is None:
        text = _edited_in_editor(host)
    elif str(filename) == "-":
        text = _utf8(sys.stdin.buffer.read(), "stdin")
    else:
        try:
            raw = filename.read_bytes()
        except OSError as err:
            raise BootcError(f"Reading {filename}: {err.strerror}") from None
        text = _utf8(raw, str(filename))
    wanted = Host.from_yaml(text).spec
    if wanted == host.spec:
        return Report(("Edit cancelled, no changes made.",))
    image_changed = wanted.image != host.spec.image
    order_changed = wanted.boot_order != host.spec.boot_order
    # Upstream's checks, in its order and words.
    if image_changed and order_changed:
        raise BootcError("Invalid state transition: rollback and image change")
    if wanted.image is None:
        raise BootcError("Missing image in specification")
    if order_changed:
        return rollback(sysroot_path)
    return switch(sysroot_path, ostree_reference(wanted.image), retain=False, progress=progress)

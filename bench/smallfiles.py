"""The small-files workload: 100,000 files of 0-4 KiB in 1,000 directories.

It measures per-entry cost rather than bytes. The files are generated straight
into two gzip layers; the upper one also rewrites and deletes some lower files.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

from layout_writer import open_layers, tag_image

RECIPE = "small-files-v1"
DIRECTORIES = 1000
FILES_PER_DIRECTORY = 100
MAX_SIZE = 4096
# The upper layer rewrites one file and deletes another in this many lower directories.
_CHURNED_DIRECTORIES = 100
_MTIME = 1_750_000_000
_POOL_SIZE = 1 << 20


def _member(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, _MTIME
    return info


def build_layout(layout: Path, tag: str) -> None:
    rng = random.Random(20260101)
    # Text-like content (hex) so gzip has something to do, as with real files.
    pool = rng.randbytes(_POOL_SIZE // 2).hex().encode()
    half = DIRECTORIES // 2
    with open_layers(layout, 2) as (outputs, written):
        for index, out in enumerate(outputs):
            tar = out.tar
            tar.addfile(_member("srv", tarfile.DIRTYPE, 0o755))
            tar.addfile(_member("srv/data", tarfile.DIRTYPE, 0o755))
            for directory in range(index * half, (index + 1) * half):
                dirname = f"srv/data/d{directory:03d}"
                tar.addfile(_member(dirname, tarfile.DIRTYPE, 0o755))
                for number in range(FILES_PER_DIRECTORY):
                    size = rng.randrange(MAX_SIZE + 1)
                    start = rng.randrange(len(pool) - size)
                    info = _member(f"{dirname}/f{number:02d}", tarfile.REGTYPE, 0o644, size)
                    tar.addfile(info, io.BytesIO(pool[start : start + size]))
            if index == 1:
                for directory in range(_CHURNED_DIRECTORIES):
                    dirname = f"srv/data/d{directory:03d}"
                    tar.addfile(_member(dirname, tarfile.DIRTYPE, 0o755))
                    data = b"rewritten by the upper layer\n"
                    tar.addfile(
                        _member(f"{dirname}/f00", tarfile.REGTYPE, 0o600, len(data)),
                        io.BytesIO(data),
                    )
                    tar.addfile(_member(f"{dirname}/.wh.f01", tarfile.REGTYPE, 0))
    tag_image(layout, tag, written)

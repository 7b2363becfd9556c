"""The floor: what every pipeline does with an image's layer blobs at the least, done
the fastest way this machine offers, in one process on one core: SHA-256 of each blob
(its digest), ISA-L's inflate (pybootc's own), and SHA-256 of the tar stream (its
diff_id). hashlib's SHA-256 is OpenSSL's, which uses the CPU's SHA extensions where it
has them; GNU `gzip` and `sha256sum` take about three times as long here.

Usage: floor_hash.py BLOB...
"""

from __future__ import annotations

import hashlib
import sys

from isal import isal_zlib

_CHUNK = 1 << 20


def digests(path: str) -> tuple[str, str]:
    """The blob's digest and its gzip stream's, decompressed."""
    blob, stream = hashlib.sha256(), hashlib.sha256()
    inflate = isal_zlib.decompressobj(wbits=47)
    with open(path, "rb") as raw:
        while chunk := raw.read(_CHUNK):
            blob.update(chunk)
            while chunk:
                stream.update(inflate.decompress(chunk))
                # Concatenated gzip members are one stream: the next gets a new inflate.
                chunk = inflate.unused_data if inflate.eof else b""
                if inflate.eof:
                    inflate = isal_zlib.decompressobj(wbits=47)
    return blob.hexdigest(), stream.hexdigest()


if __name__ == "__main__":
    for each in sys.argv[1:]:
        digests(each)

"""The `bootc` command line: argument parsing and dispatch, nothing else.

Each verb maps to one library call; a BootcError from it becomes a single
`error: ...` line and exit status 1, as upstream bootc does.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pybootc.errors import BootcError


def _flatten(args: argparse.Namespace) -> int:
    from pybootc.image_flatten import Source, flatten_image

    summary = flatten_image(
        args.image, args.output, source=Source(args.source), storage_root=args.storage
    )
    print(summary.line())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bootc", description="Image-based OS updates (pybootc)")
    parser.add_argument(
        "--sysroot", type=Path, default=Path("/"), help="the system root (default /)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the commands run")
    verbs = parser.add_subparsers(dest="verb", required=True)

    internals = verbs.add_parser("internals", help="internal and debugging commands")
    internal_verbs = internals.add_subparsers(dest="internal_verb", required=True)
    flatten = internal_verbs.add_parser(
        "flatten", help="flatten an image's layers into a directory (the overlay view)"
    )
    flatten.add_argument(
        "--source",
        choices=["blobs", "containers-storage"],
        default="blobs",
        help="read layer tar blobs, or containers-storage diff directories",
    )
    flatten.add_argument(
        "--storage", type=Path, help="containers-storage root to pull into (default: a scratch one)"
    )
    flatten.add_argument("image", help="image in any skopeo transport, e.g. oci:DIR:TAG")
    flatten.add_argument("--output", type=Path, required=True, help="directory to create")
    flatten.set_defaults(func=_flatten)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
    except BootcError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result

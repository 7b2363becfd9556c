"""Partial pulls of zstd:chunked images: what an update that changes one file of a
large layer fetches with them and without, and whether the trees containers-storage
makes from them agree with the layers' tar streams (the layer rules of
tests/test_layer_rules.py, through tests.support's kernel oracle).

pybootc keeps partial pulls off unless PYBOOTC_EXPERIMENTAL_PARTIAL_PULLS=1; these
figures are why.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pipelines as p
from measure import Sample, run_measured
from scratchfs import FsKind

from pybootc.sample.image import sample_image
from pybootc.sample.ocibuild import OciLayout, directory, file, layer
from pybootc.stores.containers_storage import PARTIAL_PULLS_ENV
from tests.support import Oracle, Registry, push_zstd_chunked
from tests.test_layer_rules import CASES

FILES = 400
FILE_BYTES = 256 << 10  # 100 MiB in one layer, that does not compress


def _images(registry: Registry, work: Path) -> str:
    """REPO:v1 and :v2, v2 with one file of the large layer changed; zstd:chunked."""
    layout = OciLayout(work / "oci")
    for tag in ("v1", "v2"):
        files = [
            (f"usr/share/big/{n}", random.Random(n).randbytes(FILE_BYTES)) for n in range(FILES)
        ]
        if tag == "v2":
            files[7] = (files[7][0], random.Random("changed").randbytes(FILE_BYTES))
        # Its directories listed before their files, as every image build lists them:
        # containers-storage 1.43 copies the files a partial pull finds locally on 32
        # goroutines, and two that both create a missing parent directory race (the
        # loser reports ENOENT); skopeo then fetches the whole layer, and says so only
        # with --debug.
        dirs = [directory(d) for d in ("usr", "usr/share", "usr/share/big")]
        entries = (*dirs, *(file(n, d) for n, d in files))
        layout.add_image(tag, sample_image("1", extra=(layer(*entries),)))
    repo = f"{registry.address}/bench/chunked"
    for tag in ("v1", "v2"):
        push_zstd_chunked(layout.ref(tag), f"docker://{repo}:{tag}", work)
    return repo


def _served(registry: Registry, since: int) -> int:
    text = registry.log_path.read_text(errors="replace")[since:]
    found = re.findall(r'"GET /v2/[^ ]*/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" 20[06] (\d+)', text)
    return sum(int(size) for size in found)


def _update(env: p.Env, repo: str, backend: str, partial: bool) -> tuple[Sample, int]:
    assert env.registry is not None
    registry = env.registry

    def run(mount: Path) -> Sample:
        p.install(env, mount, f"docker://{repo}:v1", backend)
        holder.append(len(registry.log_path.read_text(errors="replace")))
        return run_measured(
            p.bootc("--sysroot", mount / "sysroot", "switch", f"docker://{repo}:v2")
        )

    holder: list[int] = []
    if partial:
        os.environ[PARTIAL_PULLS_ENV] = "1"
    try:
        sample = p.in_fresh_filesystem(env, run, FsKind.EXT4)
    finally:
        os.environ.pop(PARTIAL_PULLS_ENV, None)
    return sample, _served(registry, holder[0])


def _oracle(registry: Registry) -> tuple[int, list[str]]:
    """How many of the layer rules a partial pull gets right; the names of the others."""
    oracle = Oracle(Path(tempfile.mkdtemp(prefix="pybootc-bench-oracle-", dir="/var/tmp")))
    os.environ[PARTIAL_PULLS_ENV] = "1"
    wrong = []
    cases = {name: case for name, case in CASES.items() if not case.refused}
    try:
        for name, case in cases.items():
            try:
                oracle.compare_partially_pulled(case.layers, registry).assert_agree()
            except Exception:
                wrong.append(name)
    finally:
        os.environ.pop(PARTIAL_PULLS_ENV, None)
        oracle.close()
    return len(cases) - len(wrong), wrong


def partial_pulls(env: p.Env, runs: int, say: Callable[[str], None]) -> dict[str, object]:
    assert env.registry is not None
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        repo = _images(env.registry, Path(work))
        cases = {
            "container, default": ("container", False),
            "container, partial pulls on": ("container", True),
            "ostree": ("ostree", False),
        }
        found = {
            name: [_update(env, repo, backend, partial) for _ in range(runs)]
            for name, (backend, partial) in cases.items()
        }
    agree, wrong = _oracle(env.registry)
    total = agree + len(wrong)

    def fetched(samples: list[tuple[Sample, int]]) -> str:
        sizes = sorted(size for _, size in samples)
        low, high = sizes[0] / 1e6, sizes[-1] / 1e6
        if low == high:
            return f"{low:.2f} MB"
        # A partial pull skopeo gave up on fetched the whole layer instead.
        whole = sum(size > FILES * FILE_BYTES for size in sizes)
        return f"{low:.2f} to {high:.2f} MB ({whole} of {len(sizes)} runs the whole layer)"

    def seconds(samples: list[tuple[Sample, int]]) -> float:
        return sorted(s.seconds for s, _ in samples)[len(samples) // 2]

    layer_mib = FILES * FILE_BYTES >> 20
    lines = [
        f"An update that changes one file ({FILE_BYTES >> 10} KiB) of a {layer_mib} MiB "
        f"zstd:chunked layer, {runs} runs each; fetched: blob bytes the registry served.",
        "",
        "| update | median s | fetched |",
        "|---|---|---|",
        *(f"| {name} | {seconds(s):.2f} | {fetched(s)} |" for name, s in found.items()),
        "",
        f"Layer rules a partial pull gets right (containers-storage on this machine): "
        f"{agree} of {total}. Wrong: {', '.join(wrong) or 'none'}.",
        "",
        "Partial pulls stay off by default while that is not all of them"
        f" ({PARTIAL_PULLS_ENV}=1 turns them on).",
    ]
    for line in lines[4:7]:
        say(f"  {line}")
    say(f"  partial pulls: {agree}/{total} layer rules right")
    return {
        "updates": {
            name: [{"seconds": s.seconds, "fetched": b} for s, b in samples]
            for name, samples in found.items()
        },
        "oracle": {"agree": agree, "wrong": wrong},
        "lines": lines,
    }

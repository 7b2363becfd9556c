"""The agent disk: how the host hands a step script to the guest and reads back what it wrote.

The guest's pybootc-test-agent mounts the ext4 disk labelled `agent`, runs `step.sh` with
bash and leaves `out/log`, `out/rc` and whatever else the step put under `out/`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.boot.disk import make_ext4, mounted
from tests.boot.host_command import BootTestError

AGENT_LABEL = "agent"
IMAGES_LABEL = "images"
# What step scripts may rely on inside the guest.
STEP_PREAMBLE = """\
set -euxo pipefail
OUT=/run/agent/out
then_() { echo "$1" > "$OUT/then"; }
# A step that starts a shutdown goes on past it: SIGTERM stops the command it is waiting
# for (`bootc upgrade --apply || true`), not the step.
trap 'echo "step: SIGTERM (shutdown)"' TERM
"""


@dataclass(frozen=True)
class StepOutput:
    """What one step left on the agent disk. `rc` is None when the step never finished."""

    rc: int | None
    log: str
    files: Mapping[str, bytes]

    def text(self, name: str) -> str:
        if name not in self.files:
            raise BootTestError(f"the step wrote no out/{name}; its log:\n{self.log}")
        return self.files[name].decode()


def make_agent_disk(
    image: Path, step: str, *, files: Mapping[str, bytes] | None = None, size_mb: int = 64
) -> Path:
    """An ext4 image labelled `agent` holding `step.sh` (after STEP_PREAMBLE) and `files`."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-agent-") as temp:
        tree = Path(temp)
        (tree / "step.sh").write_text(STEP_PREAMBLE + step)
        (tree / "out").mkdir()
        for name, data in (files or {}).items():
            path = tree / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return make_ext4(image, size_mb, AGENT_LABEL, source=tree)


def read_step_output(image: Path) -> StepOutput:
    """Everything under the agent disk's `out/`, read through a read-only mount."""
    with mounted(image) as root:
        out = root / "out"
        found = {
            str(path.relative_to(out)): path.read_bytes()
            for path in sorted(out.rglob("*"))
            if path.is_file()
        }
    rc_text = found.pop("rc", b"").decode().strip()
    log = found.pop("log", b"").decode(errors="replace")
    return StepOutput(rc=int(rc_text) if rc_text else None, log=log, files=found)


def make_images_disk(image: Path, layout: Path, *, name: str = "layout") -> Path:
    """An ext4 image labelled `images` holding the OCI layout at `/NAME` (sized to fit)."""
    size = sum(p.stat().st_size for p in layout.rglob("*") if p.is_file())
    # ext4's metadata and the journal need room beyond the data itself.
    size_mb = size // (1024 * 1024) * 12 // 10 + 64
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybootc-images-") as temp:
        tree = Path(temp)
        # Hard links, not copies: mkfs reads them like any file and the cache stays one copy.
        shutil.copytree(layout, tree / name, copy_function=_link_or_copy)
        return make_ext4(image, size_mb, IMAGES_LABEL, source=tree)


def _link_or_copy(source: str, dest: str) -> None:
    try:
        Path(dest).hardlink_to(source)
    except OSError:
        shutil.copy2(source, dest)

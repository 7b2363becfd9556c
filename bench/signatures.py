"""What verifying signatures costs an update: `bootc upgrade` to a GPG-signed image
followed as `ostree-image-signed:` under a signedBy policy, against the same upgrade
to an unsigned image under insecureAcceptAnything, on both backends. Both backends
verify with containers/image's own policy engine (through skopeo); the difference of
the two medians is the cost.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import pipelines as p
from measure import Sample, run_measured

from pybootc.errors import BootcError
from tests.test_signatures import Signing, signing_setup
from tests.toolbox import Toolbox

POLICY_ENV = "CONTAINERS_POLICY_JSON"


def _policy(signing: Signing) -> Path:
    address = signing.registry.address
    document = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                f"{address}/bench/signed": [dict(signing.requirement)],
                f"{address}/bench/open": [{"type": "insecureAcceptAnything"}],
            }
        },
    }
    path = signing.work / "policy.json"
    path.write_text(json.dumps(document))
    return path


def _upgrade(env: p.Env, signing: Signing, backend: str, signed: bool, run: int) -> Sample:
    """Install 1.0 from REPO:stream, move :stream to 2.0 and time the upgrade."""
    repo = f"bench/{'signed' if signed else 'open'}/{backend}-{run}"
    sign_by = "trusted" if signed else None
    signing.push("1.0", repo, "stream", sign_by=sign_by)
    scheme = "ostree-image-signed:docker://" if signed else "docker://"
    image = f"{scheme}{signing.registry.address}/{repo}:stream"

    def measure(mount: Path) -> Sample:
        p.install(env, mount, image, backend)
        signing.push("2.0", repo, "stream", sign_by=sign_by)
        return run_measured(p.bootc("--sysroot", mount / "sysroot", "upgrade"))

    return p.in_fresh_filesystem(env, measure)


def _refuses_unsigned(env: p.Env, signing: Signing, backend: str) -> bool:
    """The control: under the same policy, an unsigned build is refused (so the signed
    runs did verify)."""
    repo = f"bench/signed/{backend}-control"
    signing.push("1.0", repo, "stream", sign_by="trusted")
    image = f"ostree-image-signed:docker://{signing.registry.address}/{repo}:stream"

    def attempt(mount: Path) -> Sample:
        p.install(env, mount, image, backend)
        signing.push("2.0", repo, "stream", sign_by=None)
        return run_measured(p.bootc("--sysroot", mount / "sysroot", "upgrade"))

    try:
        p.in_fresh_filesystem(env, attempt)
    except BootcError as err:
        return "Source image rejected" in str(err)
    return False


def signature_cost(env: p.Env, runs: int, say: Callable[[str], None]) -> dict[str, object]:
    assert env.registry is not None
    found: dict[str, dict[str, float]] = {}
    with signing_setup("gpg", Toolbox(Path("/"), "this host"), env.registry) as signing:
        os.environ[POLICY_ENV] = str(_policy(signing))
        os.environ.update(signing.env)
        try:
            for backend in p.BACKENDS:
                # Alternating, so that drift in the machine's load falls on both alike.
                taken: dict[bool, list[float]] = {False: [], True: []}
                for n in range(runs):
                    for signed in (False, True):
                        taken[signed].append(_upgrade(env, signing, backend, signed, n).seconds)
                medians = {
                    "signed" if signed else "unsigned": statistics.median(seconds)
                    for signed, seconds in taken.items()
                }
                if not _refuses_unsigned(env, signing, backend):
                    raise BootcError(f"{backend}: an unsigned build was not refused")
                found[backend] = medians
                say(
                    f"  {backend}: upgrade {medians['unsigned']:.2f} s unsigned, "
                    f"{medians['signed']:.2f} s signed and verified"
                )
        finally:
            os.environ.pop(POLICY_ENV, None)
            for name in signing.env:
                os.environ.pop(name, None)
    lines = [
        "`bootc upgrade` of the sample image to a new build: GPG-signed and followed as "
        "`ostree-image-signed:` under a signedBy policy, against unsigned under "
        f"insecureAcceptAnything; medians of {runs}. (Under the same policy an unsigned "
        "build was refused, on both backends.)",
        "",
        "| backend | unsigned s | signed, verified s | verification costs |",
        "|---|---|---|---|",
        *(
            f"| {b} | {m['unsigned']:.2f} | {m['signed']:.2f} | "
            f"{m['signed'] - m['unsigned']:+.2f} s ({m['signed'] / m['unsigned'] - 1:+.0%}) |"
            for b, m in found.items()
        ),
    ]
    return {"upgrades": found, "lines": lines}

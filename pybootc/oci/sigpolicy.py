"""containers-policy.json: which one applies, and containers/image's verdict on an image.

pybootc never judges a signature itself. Every pull gets the policy file found here
(`--policy`), so skopeo's copy and its image proxy apply the same one, whatever
their own search order; and before any layer is fetched, `check_policy` has
containers/image evaluate that policy for the exact manifest that will be deployed.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pybootc import tools
from pybootc.errors import BootcError
from pybootc.oci.auth import RegistryAuth

POLICY_ENV = "CONTAINERS_POLICY_JSON"
_SYSTEM_POLICIES = (Path("/etc/containers/policy.json"), Path("/usr/share/containers/policy.json"))
# What containers/image says when the policy refuses the source image.
_REJECTED = "Source image rejected: "


def policy_path() -> Path | None:
    """The policy file, found as containers/image (and ostree-ext) look for it:
    $CONTAINERS_POLICY_JSON, the user's config, then the system's."""
    override = os.environ.get(POLICY_ENV)
    if override:
        return Path(override)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    candidates = (Path(config) / "containers/policy.json", *_SYSTEM_POLICIES)
    return next((p for p in candidates if p.is_file()), None)


def policy_options() -> list[str]:
    """skopeo's global options that make it apply `policy_path()`."""
    path = policy_path()
    return [] if path is None else ["--policy", str(path)]


def require_enforcing_policy() -> None:
    """What `ostree-image-signed:` and `--enforce-container-sigpolicy` need, as ostree-ext
    checks it: a policy whose default is not just `insecureAcceptAnything`."""
    path = policy_path()
    if path is None:
        raise BootcError("No containers-policy.json found")
    try:
        default = json.loads(path.read_text()).get("default")
    except (OSError, ValueError, AttributeError) as err:
        raise BootcError(f"Reading {path}: {err}") from None
    if (
        isinstance(default, list)
        and len(default) == 1
        and isinstance(default[0], dict)
        and default[0].get("type") == "insecureAcceptAnything"
    ):
        raise BootcError(
            "containers-policy.json specifies a default of `insecureAcceptAnything`; refusing usage"
        )


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port bound but never listened on: connecting to it is refused at once,
    and nothing else can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def check_policy(source: str, auth: RegistryAuth) -> None:
    """Have containers/image judge `source` (a skopeo reference, pinned by digest where
    the transport allows) against the policy; refused images raise BootcError.

    skopeo 1.9.3's image proxy applies no policy, and skopeo has no verb that only
    verifies. But `skopeo copy` evaluates the policy right after it reads the manifest
    and its signatures, before any layer: then it asks the destination whether it has
    the first layer. So the copy goes to a registry address that refuses connections.
    An image the policy rejects fails with containers/image's own `Source image
    rejected: ...`; one it accepts fails only at that address, no blob fetched.
    """
    with _refusing_port() as port:
        sentinel = f"127.0.0.1:{port}"
        proc = tools.run(
            [
                "skopeo",
                *policy_options(),
                "copy",
                "--retry-times",
                "0",
                "--remove-signatures",
                *auth.source_options(),
                "--dest-no-creds",
                source,
                f"docker://{sentinel}/pybootc-policy-check:latest",
            ],
            check=False,
        )
    reason = tools.failure_reason(proc.stderr.decode(errors="replace"))
    if proc.returncode == 0:
        raise BootcError(f"Checking the signature policy: skopeo copied to {sentinel}")
    if _REJECTED in reason:
        raise BootcError(_REJECTED + reason.split(_REJECTED, 1)[1])
    if sentinel not in reason:
        raise BootcError(f"skopeo: {reason}")

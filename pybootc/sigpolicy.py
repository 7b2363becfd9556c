"""containers-policy.json, as far as bootc looks at it: refuse "accept anything"."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pybootc.errors import BootcError

_SEARCH = (
    Path("~/.config/containers/policy.json"),
    Path("/etc/containers/policy.json"),
    Path("/usr/share/containers/policy.json"),
)


def policy_path() -> Path | None:
    override = os.environ.get("CONTAINERS_POLICY_JSON")
    candidates = [Path(override)] if override else [p.expanduser() for p in _SEARCH]
    return next((p for p in candidates if p.is_file()), None)


def require_enforcing_policy() -> None:
    """`--enforce-container-sigpolicy`: the policy must not accept anything by default."""
    path = policy_path()
    if path is None:
        raise BootcError("No containers-policy.json found")
    try:
        default = json.loads(path.read_text()).get("default", [])
    except (OSError, ValueError) as err:
        raise BootcError(f"Reading {path}: {err}") from None
    if any(isinstance(r, dict) and r.get("type") == "insecureAcceptAnything" for r in default):
        raise BootcError(
            "containers-policy.json specifies a default of insecureAcceptAnything; refusing usage"
        )

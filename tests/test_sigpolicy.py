"""`--enforce-container-sigpolicy`: a policy that accepts anything is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pybootc.errors import BootcError
from pybootc.oci.sigpolicy import require_enforcing_policy
from pybootc.sample.image import sample_image
from tests.backend_support import bootc, install, ok, one_error_line, publish, state
from tests.support import Registry

INSECURE = {"default": [{"type": "insecureAcceptAnything"}]}


def policy(tmp_path: Path, document: object, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(path))
    return path


def test_a_default_of_insecure_accept_anything_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy(tmp_path, INSECURE, monkeypatch)
    with pytest.raises(BootcError, match="specifies a default of `insecureAcceptAnything`"):
        require_enforcing_policy()


def test_a_rejecting_default_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy(tmp_path, {"default": [{"type": "reject"}]}, monkeypatch)
    require_enforcing_policy()
    # As ostree-ext reads it: only a default of that one requirement accepts anything;
    # requirements are all applied, so one more that rejects makes it enforcing.
    policy(
        tmp_path,
        {"default": [{"type": "insecureAcceptAnything"}, {"type": "reject"}]},
        monkeypatch,
    )
    require_enforcing_policy()


@pytest.mark.registry
def test_switch_with_an_insecure_policy_changes_nothing(
    registry: Registry, target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = publish(registry, tmp_path, sample_image("1.0"), repo="pybootc/sig-a")
    ok(install(target, base.docker))
    other = publish(registry, tmp_path, sample_image("2.0"), repo="pybootc/sig-b")
    policy(tmp_path, INSECURE, monkeypatch)
    before = state(target)
    proc = bootc("switch", "--enforce-container-sigpolicy", other.docker, sysroot=target)
    assert one_error_line(proc) == (
        "error: containers-policy.json specifies a default of `insecureAcceptAnything`;"
        " refusing usage"
    )
    assert state(target) == before

    # A policy that rejects everything passes the check, and skopeo enforces it.
    policy(tmp_path, {"default": [{"type": "reject"}]}, monkeypatch)
    proc = bootc("switch", "--enforce-container-sigpolicy", other.docker, sysroot=target)
    assert "rejected" in one_error_line(proc)
    assert state(target) == before

    # One that accepts this registry only: the switch goes through, enforced.
    accept = [{"type": "insecureAcceptAnything"}]
    document = {
        "default": [{"type": "reject"}],
        "transports": {"docker": {registry.address: accept}},
    }
    policy(tmp_path, document, monkeypatch)
    out = ok(bootc("switch", "--enforce-container-sigpolicy", other.docker, sysroot=target))
    assert out.startswith(f"Queued for next boot: ostree-image-signed:{other.docker}")


@pytest.mark.registry
@pytest.mark.parametrize("backend", ["ostree", "container"])
def test_an_ostree_remote_signature_is_refused_not_skipped(
    registry: Registry, target: Path, tmp_path: Path, backend: str
) -> None:
    base = publish(registry, tmp_path, sample_image("1.0"), repo=f"pybootc/remote-{backend}")
    ok(install(target, base.docker, backend=backend))
    other = publish(registry, tmp_path, sample_image("2.0"), repo=f"pybootc/remote-{backend}-2")
    before = state(target)
    wanted = f"ostree-remote-image:myremote:{other.docker}"
    proc = bootc("switch", wanted, sysroot=target)
    assert one_error_line(proc) == (
        f"error: {wanted}: verifying with the keys of ostree remote myremote is not"
        " supported; sign the image and use ostree-image-signed: with a containers policy"
    )
    assert state(target) == before

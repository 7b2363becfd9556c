"""`bootc status` for people reads exactly as upstream bootc prints it.

UPSTREAM_EXPECTED holds the expected strings of upstream's own golden tests (status.rs at
534c76ea), for the shared fixture each test renders. The other expectations are worked out
from upstream's rendering code and say so.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.host.model import (
    STORE_OSTREE_CONTAINER,
    BootEntry,
    BootEntryComposefs,
    BootEntryOstree,
    Bootloader,
    BootType,
    FilesystemOverlay,
    FilesystemOverlayAccessMode,
    FilesystemOverlayPersistence,
    Host,
    HostStatus,
    ImageReference,
    ImageSignature,
    ImageStatus,
)
from pybootc.host.render import render_human
from tests.strategies import any_store, hosts
from tests.support import FIXTURE_NAMES, fixture_host

UPSTREAM_EXPECTED = {
    # test_human_readable_base_spec
    "spec-staged-booted.yaml": """\
  Staged image: quay.io/example/someimage:latest
        Digest: sha256:16dc2b6256b4ff0d2ec18d2dbfb06d117904010c8cf9732cdb022818cf7a7566 (arm64)
       Version: nightly (2023-10-14T19:22:15Z)

● Booted image: quay.io/example/someimage:latest
        Digest: sha256:736b359467c9437c1ac915acaae952aad854e07eb4a16a94999a48af08c83c34 (arm64)
       Version: nightly (2023-09-30T19:22:16Z)
""",
    # test_human_readable_booted_spec
    "spec-only-booted.yaml": """\
● Booted image: quay.io/centos-bootc/centos-bootc:stream9
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38 (arm64)
       Version: stream9.20240807.0
""",
    # test_human_readable_staged_rollback_spec
    "spec-staged-rollback.yaml": "System is not deployed via bootc.\n",
    # test_via_oci
    "spec-via-local-oci.yaml": """\
● Booted image: oci:/var/mnt/osupdate
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38 (amd64)
       Version: stream9.20240807.0
""",
    # test_human_readable_booted_pinned_spec
    "spec-booted-pinned.yaml": """\
● Booted image: quay.io/centos-bootc/centos-bootc:stream9
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38 (arm64)
       Version: stream9.20240807.0
        Pinned: yes

   Other image: quay.io/centos-bootc/centos-bootc:stream9
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b37 (arm64)
       Version: stream9.20240807.0
        Pinned: yes
""",
    # test_human_readable_booted_with_cached_update
    "spec-booted-with-update.yaml": """\
● Booted image: quay.io/centos-bootc/centos-bootc:stream9
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38 (arm64)
       Version: stream9.20240807.0 (2024-08-07T12:00:00Z)
 UpdateVersion: stream9.20240901.0 (2024-09-01T12:00:00Z)
  UpdateDigest: sha256:a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0
""",
    # test_human_readable_cached_update_no_version
    "spec-booted-with-update-no-version.yaml": """\
● Booted image: quay.io/centos-bootc/centos-bootc:stream9
        Digest: sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38 (arm64)
       Version: stream9.20240807.0
        Update: Available
  UpdateDigest: sha256:b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1
""",
}

# Fixtures upstream renders in no golden test; worked out from its rendering code.
DERIVED_EXPECTED = {
    # A cached update with the digest already booted is not shown.
    "spec-booted-update-same-digest.yaml": UPSTREAM_EXPECTED["spec-only-booted.yaml"],
    "spec-v1-null.json": "System is not deployed via bootc.\n",
}

DIGEST = "sha256:" + "c" * 64


def _image(
    name: str = "quay.io/a/os:1", *, version: str | None = "1.0", timestamp: str | None = None
) -> ImageStatus:
    return ImageStatus(
        ImageReference(name, "registry"), DIGEST, "amd64", version=version, timestamp=timestamp
    )


def _ostree(checksum: str = "ab" * 32, serial: int = 0) -> BootEntryOstree:
    return BootEntryOstree(stateroot="default", checksum=checksum, deploy_serial=serial)


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(UPSTREAM_EXPECTED | DERIVED_EXPECTED) == sorted(FIXTURE_NAMES)


@pytest.mark.parametrize("name", sorted(UPSTREAM_EXPECTED))
def test_fixtures_render_as_upstream_golden_tests_expect(name: str) -> None:
    assert render_human(fixture_host(name)) == UPSTREAM_EXPECTED[name]


@pytest.mark.parametrize("name", sorted(DERIVED_EXPECTED))
def test_other_fixtures_render_as_upstream_code_would(name: str) -> None:
    assert render_human(fixture_host(name)) == DERIVED_EXPECTED[name]


def test_an_empty_host_is_not_deployed_via_bootc() -> None:
    assert render_human(Host.empty()) == "System is not deployed via bootc.\n"
    assert render_human(Host.empty(), require_booted=False) == (
        "System is not deployed via bootc.\n"
    )


# --- verbose ------------------------------------------------------------------------------


def test_verbose_adds_ostree_details_as_upstream_test_checks() -> None:
    # Upstream's test_human_readable_verbose_spec checks these labels are present.
    text = render_human(fixture_host("spec-only-booted.yaml"), verbose=True)
    for label in ("StateRoot:", "Deploy serial:", "Staged:", "Commit:", "Soft-reboot:"):
        assert label in text


def test_verbose_shows_download_only_for_the_staged_entry() -> None:
    # Upstream: test_human_readable_staged_(not_)download_only_verbose.
    host = fixture_host("spec-staged-booted.yaml")
    assert host.status.staged is not None
    staged = replace(host.status.staged, download_only=True)
    download_only = replace(host, status=replace(host.status, staged=staged))
    assert "Download-only: yes" in render_human(download_only, verbose=True)
    assert "Download-only: no" in render_human(
        fixture_host("spec-staged-booted.yaml"), verbose=True
    )


def test_verbose_stanzas_in_upstream_order() -> None:
    # Worked out from upstream's human_render_slot: ostree rows, Commit, Signature,
    # Soft-reboot, then Download-only for the staged entry only.
    assert (
        render_human(fixture_host("spec-staged-booted.yaml"), verbose=True)
        == """\
  Staged image: quay.io/example/someimage:latest
        Digest: sha256:16dc2b6256b4ff0d2ec18d2dbfb06d117904010c8cf9732cdb022818cf7a7566 (arm64)
       Version: nightly (2023-10-14T19:22:15Z)
     StateRoot: default
 Deploy serial: 0
        Staged: yes
        Commit: 3c6dad657109522e0b2e49bf44b5420f16f0b438b5b9357e5132211cfbad135d
     Signature: insecure
   Soft-reboot: no
 Download-only: no

● Booted image: quay.io/example/someimage:latest
        Digest: sha256:736b359467c9437c1ac915acaae952aad854e07eb4a16a94999a48af08c83c34 (arm64)
       Version: nightly (2023-09-30T19:22:16Z)
     StateRoot: default
 Deploy serial: 0
        Staged: no
        Commit: 26836632adf6228d64ef07a26fd3efaf177104efd1f341a2cf7909a3e4e2c72c
     Signature: insecure
   Soft-reboot: no
"""
    )


def _ostree_only() -> Host:
    """Deployments that came from plain ostree, not an image (upstream's rfe fixture)."""
    host = fixture_host("spec-staged-booted.yaml")
    assert host.status.staged is not None and host.status.booted is not None
    staged = replace(host.status.staged, image=None, ostree=_ostree(STAGED_COMMIT))
    booted = replace(host.status.booted, image=None, ostree=_ostree(BOOTED_COMMIT))
    return replace(host, status=replace(host.status, staged=staged, booted=booted))


STAGED_COMMIT = "1c24260fdd1be20f72a4a97a75c582834ee3431fbb0fa8e4f482bb219d633a45"
BOOTED_COMMIT = "f9fa3a553ceaaaf30cf85bfe7eed46a822f7b8fd7e14c1e3389cbc3f6d27f791"


def test_ostree_only_deployments_render_as_upstream() -> None:
    # upstream's test_human_readable_rfe_spec
    assert (
        render_human(_ostree_only())
        == f"""\
  Staged ostree
         Commit: {STAGED_COMMIT}

● Booted ostree
           Commit: {BOOTED_COMMIT}
"""
    )


def test_verbose_ostree_stanza_aligns_to_the_title_in_bytes_as_upstream() -> None:
    assert (
        render_human(_ostree_only(), verbose=True)
        == """\
  Staged ostree
         Commit: 1c24260fdd1be20f72a4a97a75c582834ee3431fbb0fa8e4f482bb219d633a45
      StateRoot: default
  Deploy serial: 0
         Staged: yes
    Soft-reboot: no
  Download-only: no

● Booted ostree
           Commit: f9fa3a553ceaaaf30cf85bfe7eed46a822f7b8fd7e14c1e3389cbc3f6d27f791
        StateRoot: default
    Deploy serial: 0
           Staged: no
      Soft-reboot: no
"""
    )


@pytest.mark.parametrize(
    ("signature", "shown"),
    [
        (ImageSignature.ostree_remote("fedora"), "ostree-remote:fedora"),
        (ImageSignature.container_policy(), "container-policy"),
        (ImageSignature.insecure(), "insecure"),
    ],
)
def test_verbose_signature_names(signature: ImageSignature, shown: str) -> None:
    image = replace(_image(), image=ImageReference("quay.io/a/os:1", "registry", signature))
    host = Host(status=HostStatus(booted=BootEntry(image=image)))
    assert f"     Signature: {shown}\n" in render_human(host, verbose=True)
    assert "Signature" not in render_human(host)


# --- stanzas upstream has no fixture for --------------------------------------------------


def test_rollback_and_pinned_other_entries_align_to_their_own_titles() -> None:
    status = HostStatus(
        booted=BootEntry(image=_image(timestamp="2024-01-02T03:04:05.678Z")),
        rollback=BootEntry(image=_image(version=None, timestamp="2023-01-01T00:00:00Z")),
        other_deployments=(BootEntry(ostree=_ostree(), pinned=True),),
    )
    assert (
        render_human(Host(status=status))
        == f"""\
● Booted image: quay.io/a/os:1
        Digest: {DIGEST} (amd64)
       Version: 1.0 (2024-01-02T03:04:05Z)

  Rollback image: quay.io/a/os:1
          Digest: {DIGEST} (amd64)
       Timestamp: 2023-01-01T00:00:00Z

 Other ostree
       Commit: {"ab" * 32}
       Pinned: yes
"""
    )


def test_an_entry_with_nothing_known_says_so() -> None:
    host = Host(status=HostStatus(staged=BootEntry(), booted=BootEntry(image=_image())))
    assert render_human(host).startswith("Current staged state is unknown\n\n● Booted image:")


def test_an_other_entry_with_nothing_known_leaves_only_the_blank_line() -> None:
    host = Host(
        status=HostStatus(booted=BootEntry(image=_image()), other_deployments=(BootEntry(),))
    )
    assert render_human(host).endswith("       Version: 1.0\n\n")


def test_composefs_entries_show_verity() -> None:
    composefs = BootEntryComposefs("v" * 8, BootType.UKI, Bootloader.SYSTEMD, True)
    status = HostStatus(
        staged=BootEntry(composefs=composefs),
        booted=BootEntry(image=_image(), composefs=composefs),
    )
    host = Host(status=status)
    assert (
        render_human(host)
        == f"""\
  Staged composefs
            Commit: vvvvvvvv

● Booted image: quay.io/a/os:1
        Digest: {DIGEST} (amd64)
        Verity: vvvvvvvv
       Version: 1.0
"""
    )
    assert "      FsVerity: Not Enforced\n" in render_human(host, verbose=True)


def test_a_non_registry_transport_is_written_before_the_name() -> None:
    image = replace(_image(), image=ImageReference("localhost/os", "containers-storage"))
    host = Host(status=HostStatus(booted=BootEntry(image=image)))
    assert render_human(host).startswith("● Booted image: containers-storage:localhost/os\n")


# --- pybootc's additions ------------------------------------------------------------------


def test_backend_row_for_a_deployment_of_another_backend() -> None:
    status = HostStatus(
        staged=BootEntry(image=_image(), store="container", ostree=_ostree()),
        booted=BootEntry(image=_image(), store=STORE_OSTREE_CONTAINER, ostree=_ostree()),
    )
    assert (
        render_human(Host(status=status))
        == f"""\
  Staged image: quay.io/a/os:1
        Digest: {DIGEST} (amd64)
       Version: 1.0
       Backend: container

● Booted image: quay.io/a/os:1
        Digest: {DIGEST} (amd64)
       Version: 1.0
"""
    )
    verbose = render_human(Host(status=status), verbose=True)
    assert verbose.split("\n\n")[0].endswith(" Download-only: no\n       Backend: container")


def test_a_sysroot_that_is_not_booted_renders_its_entries_when_asked() -> None:
    # DESIGN: a sysroot that is not the running system has staged and rollback but no
    # booted entry; upstream would call it not deployed.
    host = fixture_host("spec-staged-rollback.yaml")
    assert render_human(host) == "System is not deployed via bootc.\n"
    assert (
        render_human(host, require_booted=False)
        == """\
  Staged image: quay.io/example/someimage:latest
        Digest: sha256:16dc2b6256b4ff0d2ec18d2dbfb06d117904010c8cf9732cdb022818cf7a7566 (s390x)
       Version: nightly (2023-10-14T19:22:15Z)

  Rollback image: quay.io/example/someimage:latest
          Digest: sha256:736b359467c9437c1ac915acaae952aad854e07eb4a16a94999a48af08c83c34 (s390x)
         Version: nightly (2023-09-30T19:22:16Z)
"""
    )


def _without_stores(host: Host) -> Host:
    def strip(entry: BootEntry | None) -> BootEntry | None:
        return None if entry is None else replace(entry, store=None)

    status = host.status
    others = tuple(replace(e, store=None) for e in status.other_deployments)
    return replace(
        host,
        status=replace(
            status,
            staged=strip(status.staged),
            booted=strip(status.booted),
            rollback=strip(status.rollback),
            other_deployments=others,
        ),
    )


@given(hosts(any_store), st.booleans(), st.booleans())
def test_any_host_renders_to_text_ending_in_a_newline(
    host: Host, verbose: bool, require_booted: bool
) -> None:
    assert render_human(host, verbose=verbose, require_booted=require_booted).endswith("\n")


@given(hosts(st.none() | st.just(STORE_OSTREE_CONTAINER)), st.booleans())
def test_upstream_store_never_changes_the_output(host: Host, verbose: bool) -> None:
    assert render_human(host, verbose=verbose) == render_human(
        _without_stores(host), verbose=verbose
    )


def test_a_usr_overlay_is_shown_as_upstream() -> None:
    # upstream's test_human_readable_booted_usroverlay
    host = fixture_host("spec-only-booted.yaml")
    overlay = FilesystemOverlay(
        FilesystemOverlayAccessMode.READ_WRITE, FilesystemOverlayPersistence.TRANSIENT
    )
    text = render_human(replace(host, status=replace(host.status, usr_overlay=overlay)))
    assert text.endswith("  /usr overlay: transient, read/write\n")


def test_an_image_staged_over_an_ostree_deployment() -> None:
    # upstream's test_human_readable_staged_spec (ostree to bootc)
    host = fixture_host("spec-staged-booted.yaml")
    assert host.status.booted is not None
    booted = replace(host.status.booted, image=None, ostree=_ostree(BOOTED_COMMIT))
    text = render_human(replace(host, status=replace(host.status, booted=booted)))
    staged = UPSTREAM_EXPECTED["spec-staged-booted.yaml"].split("\n\n")[0]
    assert text == f"{staged}\n\n● Booted ostree\n           Commit: {BOOTED_COMMIT}\n"

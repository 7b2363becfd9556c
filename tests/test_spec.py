"""The Host document reads every upstream fixture, round-trips, and validates against the schema.

The fixtures are upstream bootc's, as shared/reference/upstream-bootc holds them: status
documents from several bootc versions, some older than fields the schema now has. What
they do not cover is built here from them.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pybootc.errors import BootcError
from pybootc.host.fields import normalize_timestamp
from pybootc.host.model import (
    STORE_OSTREE_CONTAINER,
    BootEntry,
    BootEntryComposefs,
    BootEntryOstree,
    Bootloader,
    BootOrder,
    BootType,
    FilesystemOverlay,
    FilesystemOverlayAccessMode,
    FilesystemOverlayPersistence,
    Host,
    HostStatus,
    HostType,
    ImageReference,
    ImageSignature,
    ImageStatus,
    Slot,
)
from pybootc.host.yaml_text import dump_yaml, load_yaml
from tests.strategies import any_store, hosts
from tests.support import FIXTURE_NAMES, SHARED_REFERENCE, UPSTREAM_FIXTURE_DIR, fixture_host

UPSTREAM_FIXTURES: dict[str, str] = {
    name: (UPSTREAM_FIXTURE_DIR / name).read_text() for name in FIXTURE_NAMES
}

# host-v1.schema.json: a copy inside the repository wins over the shared reference.
_SCHEMA_PLACES = [
    Path(__file__).parent / "data" / "upstream-bootc" / "host-v1.schema.json",
    SHARED_REFERENCE / "upstream-bootc" / "host-v1.schema.json",
]

DIGEST_A = "sha256:" + "a" * 64


@functools.cache
def schema_validator() -> jsonschema.protocols.Validator:
    """A validator for host-v1.schema.json, with its date-time format checked."""
    found = next((p for p in _SCHEMA_PLACES if p.exists()), None)
    if found is None:
        pytest.fail(f"host-v1.schema.json not found in {[str(p) for p in _SCHEMA_PLACES]}")
    schema = json.loads(found.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_the_shared_fixtures_are_there() -> None:
    assert "spec-v1-null.json" in FIXTURE_NAMES and len(FIXTURE_NAMES) >= 9


# --- reading upstream's documents ---------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_upstream_fixture_round_trips_through_json_dict(name: str) -> None:
    host = fixture_host(name)
    assert Host.from_json_dict(host.to_json_dict()) == host


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_upstream_fixture_round_trips_through_json_and_yaml_text(name: str) -> None:
    host = fixture_host(name)
    assert Host.from_json(host.to_json()) == host
    assert Host.from_yaml(host.to_yaml()) == host
    assert Host.from_json(host.to_canonical_json()) == host


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_upstream_fixture_written_back_validates_against_the_schema(name: str) -> None:
    schema_validator().validate(fixture_host(name).to_json_dict())


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_fields_survive_the_round_trip_as_written(name: str) -> None:
    # Everything the fixture says comes back unchanged, apart from the newer fields that
    # get their defaults, timestamps in bootc's normalized form and ignored unknown keys.
    original = yaml.load(UPSTREAM_FIXTURES[name], Loader=yaml.BaseLoader)
    written = yaml.load(fixture_host(name).to_yaml(), Loader=yaml.BaseLoader)

    def compare(old: Any, new: Any, where: str) -> None:
        if isinstance(old, dict):
            for key, value in old.items():
                if key == "isContainer":  # a field of v1alpha1 that bootc dropped
                    continue
                assert key in new, f"{where}.{key} lost"
                compare(value, new[key], f"{where}.{key}")
        elif isinstance(old, list):
            assert len(old) == len(new), where
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                compare(a, b, f"{where}[{i}]")
        elif where.endswith(".timestamp") and old not in ("null", ""):
            assert new == normalize_timestamp(old), where
        else:
            assert new == old, where

    compare(original, written, "")


def test_an_empty_host_is_exactly_spec_v1_null() -> None:
    expected = json.loads(UPSTREAM_FIXTURES["spec-v1-null.json"])
    assert Host.empty().to_json_dict() == expected
    assert list(Host.empty().to_json_dict()["status"]) == list(expected["status"])
    assert Host.from_json_dict(expected) == Host.empty()


def test_old_fixtures_get_the_defaults_of_newer_fields() -> None:
    host = fixture_host("spec-staged-rollback.yaml")
    assert host.api_version == "org.containers.bootc/v1alpha1"
    assert host.spec.boot_order is BootOrder.DEFAULT
    assert host.status.rollback_queued is False
    assert host.status.type is None
    assert host.status.other_deployments == ()
    staged = host.status.staged
    assert staged is not None
    assert (staged.soft_reboot_capable, staged.store, staged.cached_update) == (False, None, None)
    entry = host.to_json_dict()["status"]["staged"]
    assert entry["softRebootCapable"] is False
    assert entry["store"] is None


def test_fixture_fields_are_read_into_the_dataclasses() -> None:
    host = fixture_host("spec-booted-with-update.yaml")
    booted = host.status.booted
    assert booted is not None and booted.image is not None and booted.cached_update is not None
    assert booted.image == ImageStatus(
        image=ImageReference("quay.io/centos-bootc/centos-bootc:stream9", "registry"),
        image_digest="sha256:47e5ed613a970b6574bfa954ab25bb6e85656552899aa518b5961d9645102b38",
        architecture="arm64",
        version="stream9.20240807.0",
        timestamp="2024-08-07T12:00:00Z",
    )
    assert booted.cached_update.version == "stream9.20240901.0"
    assert booted.ostree == BootEntryOstree(
        stateroot="default",
        checksum="439f6bd2e2361bee292c1f31840d798c5ac5ba76483b8021dc9f7b0164ac0f48",
        deploy_serial=0,
    )
    assert host.status.type is HostType.BOOTC_HOST
    assert host.spec.image == ImageReference(
        "quay.io/centos-bootc/centos-bootc:stream9", "registry"
    )


def test_an_ostree_remote_signature_is_read_from_its_yaml_tag() -> None:
    text = UPSTREAM_FIXTURES["spec-only-booted.yaml"].replace(
        "transport: registry\n", "transport: registry\n    signature: !ostreeRemote fedora\n", 1
    )
    host = Host.from_yaml(text)
    assert host.spec.image is not None
    assert host.spec.image.signature == ImageSignature.ostree_remote("fedora")
    assert host.to_json_dict()["spec"]["image"]["signature"] == {"ostreeRemote": "fedora"}
    assert "    signature: !ostreeRemote fedora\n" in host.to_yaml()


def test_unquoted_yaml_scalars_stay_text_where_the_schema_wants_text() -> None:
    # serde_yaml reads by the field's type; a YAML 1.1 reader would see a float and a date.
    text = re.sub(
        r"version: .*\n      timestamp: .*\n",
        "version: 20231230.1\n      timestamp: 2023-12-30T16:10:11Z\n",
        UPSTREAM_FIXTURES["spec-only-booted.yaml"],
        count=1,
    )
    host = Host.from_yaml(text)
    assert host.status.booted is not None and host.status.booted.image is not None
    assert host.status.booted.image.version == "20231230.1"
    assert host.status.booted.image.timestamp == "2023-12-30T16:10:11Z"


def test_usr_overlay_and_other_newer_status_fields_are_read() -> None:
    document = yaml.safe_load(UPSTREAM_FIXTURES["spec-only-booted.yaml"])
    document["status"]["usrOverlay"] = {"accessMode": "readWrite", "persistence": "transient"}
    host = Host.from_json_dict(document)
    assert host.status.usr_overlay == FilesystemOverlay(
        FilesystemOverlayAccessMode.READ_WRITE, FilesystemOverlayPersistence.TRANSIENT
    )
    assert host.to_json_dict()["status"]["usrOverlay"] == {
        "accessMode": "readWrite",
        "persistence": "transient",
    }


# --- writing ------------------------------------------------------------------------------


def test_keys_come_out_in_bootc_order_not_sorted() -> None:
    doc = fixture_host("spec-booted-pinned.yaml").to_json_dict()
    assert list(doc) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert list(doc["spec"]) == ["image", "bootOrder"]
    status = doc["status"]
    assert list(status) == [
        "staged",
        "booted",
        "rollback",
        "otherDeployments",
        "rollbackQueued",
        "type",
    ]
    assert list(status["booted"]) == [
        "image",
        "cachedUpdate",
        "incompatible",
        "pinned",
        "softRebootCapable",
        "downloadOnly",
        "store",
        "ostree",
    ]
    image = status["booted"]["image"]
    assert list(image) == ["image", "version", "timestamp", "imageDigest", "architecture"]
    assert list(status["booted"]["ostree"]) == ["stateroot", "checksum", "deploySerial"]
    yaml_keys = [
        line.split(":")[0] for line in fixture_host("spec-only-booted.yaml").to_yaml().splitlines()
    ]
    assert yaml_keys[:5] == ["apiVersion", "kind", "metadata", "  name", "spec"]


def test_other_deployments_are_left_out_when_empty() -> None:
    assert "otherDeployments" not in fixture_host("spec-only-booted.yaml").to_json_dict()["status"]
    pinned = fixture_host("spec-booted-pinned.yaml").to_json_dict()["status"]
    assert len(pinned["otherDeployments"]) == 1


def test_signature_is_left_out_when_absent_and_written_per_kind() -> None:
    def signature_of(signature: ImageSignature | None) -> object:
        return (
            ImageReference("quay.io/a/b:c", "registry", signature)
            .to_json_dict()
            .get("signature", "<absent>")
        )

    assert signature_of(None) == "<absent>"
    assert signature_of(ImageSignature.insecure()) == "insecure"
    assert signature_of(ImageSignature.container_policy()) == "containerPolicy"
    assert signature_of(ImageSignature.ostree_remote("fedora")) == {"ostreeRemote": "fedora"}


def test_json_is_pretty_printed_with_two_spaces() -> None:
    assert Host.empty().to_json() == (
        "{\n"
        '  "apiVersion": "org.containers.bootc/v1",\n'
        '  "kind": "BootcHost",\n'
        '  "metadata": {\n'
        '    "name": "host"\n'
        "  },\n"
        '  "spec": {\n'
        '    "image": null,\n'
        '    "bootOrder": "default"\n'
        "  },\n"
        '  "status": {\n'
        '    "staged": null,\n'
        '    "booted": null,\n'
        '    "rollback": null,\n'
        '    "rollbackQueued": false,\n'
        '    "type": null\n'
        "  }\n"
        "}"
    )


def test_canonical_json_sorts_keys_without_whitespace_as_upstream_status_json() -> None:
    assert Host.empty().to_canonical_json() == (
        '{"apiVersion":"org.containers.bootc/v1","kind":"BootcHost","metadata":{"name":"host"},'
        '"spec":{"bootOrder":"default","image":null},"status":{"booted":null,"rollback":null,'
        '"rollbackQueued":false,"staged":null,"type":null}}'
    )


def test_yaml_of_an_empty_host() -> None:
    assert Host.empty().to_yaml() == (
        "apiVersion: org.containers.bootc/v1\n"
        "kind: BootcHost\n"
        "metadata:\n"
        "  name: host\n"
        "spec:\n"
        "  image: null\n"
        "  bootOrder: default\n"
        "status:\n"
        "  staged: null\n"
        "  booted: null\n"
        "  rollback: null\n"
        "  rollbackQueued: false\n"
        "  type: null\n"
    )


def test_yaml_quotes_text_as_serde_yaml_does() -> None:
    image = ImageStatus(
        ImageReference("x", "oci"),
        DIGEST_A,
        "amd64",
        version="1.10",
        timestamp="2024-01-01T00:00:00Z",
    )
    text = Host(status=HostStatus(booted=BootEntry(image=image))).to_yaml()
    # What serde_yaml would read back as a number is quoted; a timestamp is text to it,
    # so it is plain, as upstream's status writes it.
    assert "version: '1.10'\n" in text
    assert "timestamp: 2024-01-01T00:00:00Z\n" in text
    assert Host.from_yaml(text) == Host(status=HostStatus(booted=BootEntry(image=image)))


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("yes", "yes"),
        ("on", "on"),
        ("2023-10-14T19:22:15.42Z", "2023-10-14T19:22:15.42Z"),
        ("inf", "inf"),
        ("1_000", "1_000"),
        ("0o17", "'0o17'"),
        ("-0x1F", "'-0x1F'"),
        ("0123", "'0123'"),
        ("1e5", "'1e5'"),
        (".5", "'.5'"),
        ("20231230.1", "'20231230.1'"),
        ("true", "'true'"),
        ("NULL", "'NULL'"),
        ("~", "'~'"),
        ("", "''"),
        (".NaN", "'.NaN'"),
    ],
)
def test_yaml_text_quoted_where_serde_yaml_quotes_it(text: str, written: str) -> None:
    assert dump_yaml({"version": text}) == f"version: {written}\n"
    assert load_yaml(dump_yaml({"version": text})) == {"version": text}


def test_store_takes_pybootc_backend_names_too() -> None:
    entry = BootEntry(store="container")
    host = Host(status=HostStatus(booted=entry))
    assert host.to_json_dict()["status"]["booted"]["store"] == "container"
    assert Host.from_json(host.to_json()) == host


def test_newer_optional_fields_are_written_only_when_set() -> None:
    composefs = BootEntryComposefs("abc", BootType.BLS, Bootloader.SYSTEMD, False, "sha256:x")
    status = HostStatus(
        booted=BootEntry(composefs=composefs),
        usr_overlay=FilesystemOverlay(
            FilesystemOverlayAccessMode.READ_ONLY, FilesystemOverlayPersistence.PERSISTENT
        ),
        read_only=True,
    )
    doc = Host(status=status).to_json_dict()["status"]
    assert doc["booted"]["composefs"] == {
        "verity": "abc",
        "bootType": "Bls",
        "bootloader": "systemd",
        "bootDigest": "sha256:x",
        "missingVerityAllowed": False,
    }
    assert doc["usrOverlay"] == {"accessMode": "readOnly", "persistence": "persistent"}
    assert doc["readOnly"] is True
    plain = Host(status=HostStatus(booted=BootEntry())).to_json_dict()["status"]
    assert "composefs" not in plain["booted"]
    assert "usrOverlay" not in plain
    assert "readOnly" not in plain


def test_filter_to_slot_keeps_only_that_slot() -> None:
    host = fixture_host("spec-staged-booted.yaml")
    booted_only = host.filter_to_slot(Slot.BOOTED)
    assert booted_only.status.booted == host.status.booted
    assert booted_only.status.staged is None
    assert booted_only.status.rollback is None
    assert booted_only.spec == host.spec


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "written"),
    [
        ("2024-08-07T12:00:00Z", "2024-08-07T12:00:00Z"),
        ("2023-10-14T19:22:15.42Z", "2023-10-14T19:22:15.420Z"),
        ("2023-10-14T19:22:15.000Z", "2023-10-14T19:22:15Z"),
        ("2023-10-14T19:22:15.1234Z", "2023-10-14T19:22:15.123400Z"),
        ("2024-06-15T10:30:45.123456789Z", "2024-06-15T10:30:45.123456789Z"),
        ("2024-06-15T10:30:45.1234567891Z", "2024-06-15T10:30:45.123456789Z"),
        ("2024-01-01T01:30:00+02:00", "2023-12-31T23:30:00Z"),
        ("2024-01-01t00:00:00-00:30", "2024-01-01T00:30:00Z"),
        ("2024-01-01 00:00:00z", "2024-01-01T00:00:00Z"),
    ],
)
def test_timestamps_are_written_as_bootc_chrono_writes_them(given_text: str, written: str) -> None:
    assert normalize_timestamp(given_text) == written


def test_a_datetime_from_a_plain_yaml_reader_is_accepted() -> None:
    data = yaml.safe_load(UPSTREAM_FIXTURES["spec-staged-booted.yaml"])
    assert isinstance(data["status"]["staged"]["image"]["timestamp"], datetime)
    assert Host.from_json_dict(data) == fixture_host("spec-staged-booted.yaml")
    assert normalize_timestamp(datetime(2024, 1, 1, 0, 0, 0, 5)) == "2024-01-01T00:00:00.000005Z"


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-01-01", "2024-01-01T00:00:00", "2024-02-30T00:00:00Z"]
)
def test_a_timestamp_that_is_not_rfc3339_is_refused(text: str) -> None:
    with pytest.raises(BootcError, match="Invalid timestamp"):
        normalize_timestamp(text)


# --- bad documents ------------------------------------------------------------------------


def _booted(**image_fields: object) -> dict[str, Any]:
    doc = Host.empty().to_json_dict()
    image: dict[str, object] = {"image": {"image": "x", "transport": "registry"}}
    image |= {"imageDigest": DIGEST_A, "architecture": "amd64"} | image_fields
    doc["status"]["booted"] = {"image": image, "incompatible": False, "pinned": False}
    return doc


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "Invalid host document: document: expected an object, found a list"),
        ({"kind": "BootcHost"}, 'Invalid host document: document: missing field "apiVersion"'),
        (
            {"apiVersion": "v", "kind": "k", "spec": {"bootOrder": "sideways"}},
            'Invalid host document: spec.bootOrder: unknown variant "sideways", '
            'expected one of "default", "rollback"',
        ),
        (
            {"apiVersion": "v", "kind": "k", "spec": {"image": {"image": "x"}}},
            'Invalid host document: spec.image: missing field "transport"',
        ),
        (
            _booted(imageDigest=None),
            "Invalid host document: status.booted.image.imageDigest: expected a string, found null",
        ),
        (
            _booted(timestamp="soon"),
            'Invalid host document: status.booted.image.timestamp: Invalid timestamp "soon": '
            "expected an RFC 3339 date-time",
        ),
        (
            _booted(image={"image": "x", "transport": "registry", "signature": "trustme"}),
            'Invalid host document: status.booted.image.image.signature: unknown variant "trustme"'
            ', expected one of "ostreeRemote", "containerPolicy", "insecure"',
        ),
        (
            {"apiVersion": "v", "kind": "k", "status": {"otherDeployments": [{"pinned": True}]}},
            'Invalid host document: status.otherDeployments[0]: missing field "incompatible"',
        ),
        (
            {"apiVersion": "v", "kind": "k", "status": {"rollbackQueued": "yes"}},
            "Invalid host document: status.rollbackQueued: expected a boolean, found a string",
        ),
    ],
)
def test_a_bad_document_names_the_field_at_fault(doc: object, message: str) -> None:
    with pytest.raises(BootcError) as caught:
        Host.from_json_dict(doc)
    assert str(caught.value) == message


def test_a_deploy_serial_must_be_an_unsigned_32_bit_integer() -> None:
    doc = fixture_host("spec-only-booted.yaml").to_json_dict()
    doc["status"]["booted"]["ostree"]["deploySerial"] = -1
    with pytest.raises(BootcError, match=r"status\.booted\.ostree\.deploySerial: expected an"):
        Host.from_json_dict(doc)


def test_text_that_is_not_json_or_yaml_is_a_bootc_error() -> None:
    with pytest.raises(BootcError, match="Invalid host document"):
        Host.from_json("{")
    with pytest.raises(BootcError, match="Invalid host document"):
        Host.from_yaml("a: [")


def test_a_signature_kind_and_remote_must_agree() -> None:
    with pytest.raises(BootcError):
        ImageSignature(ImageSignature.insecure().kind, "fedora")
    with pytest.raises(BootcError):
        ImageSignature(ImageSignature.ostree_remote("x").kind)


# --- generated hosts ----------------------------------------------------------------------


@given(hosts(any_store))
def test_generated_hosts_round_trip_through_dict_json_and_yaml(host: Host) -> None:
    assert Host.from_json_dict(host.to_json_dict()) == host
    assert Host.from_json(host.to_json()) == host
    assert Host.from_yaml(host.to_yaml()) == host


@given(hosts(st.none() | st.just(STORE_OSTREE_CONTAINER)))
def test_generated_hosts_with_upstream_stores_validate_against_the_schema(host: Host) -> None:
    schema_validator().validate(host.to_json_dict())


# --- upstream's fixtures, unchanged -------------------------------------------------------

"""Image references parse and print the way bootc and ostree-ext write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybootc.errors import BootcError
from pybootc.oci.imgref import (
    ImageReference,
    OstreeImageReference,
    SignatureKind,
    SignatureSource,
    Transport,
)


@pytest.mark.parametrize(
    ("text", "transport", "name"),
    [
        (
            "docker://quay.io/exampleos/blah:sometag",
            Transport.REGISTRY,
            "quay.io/exampleos/blah:sometag",
        ),
        ("registry:quay.io/exampleos/blah", Transport.REGISTRY, "quay.io/exampleos/blah"),
        ("oci:/some/dir:tag", Transport.OCI, "/some/dir:tag"),
        ("oci:somedir", Transport.OCI, "somedir"),
        ("oci-archive:/path/to/foo.ociarchive", Transport.OCI_ARCHIVE, "/path/to/foo.ociarchive"),
        ("docker-archive:/f.tar", Transport.DOCKER_ARCHIVE, "/f.tar"),
        (
            "containers-storage:localhost/someimage:blah",
            Transport.CONTAINERS_STORAGE,
            "localhost/someimage:blah",
        ),
        (
            "containers-storage:[overlay@/var/lib/containers+/run/containers]busybox",
            Transport.CONTAINERS_STORAGE,
            "[overlay@/var/lib/containers+/run/containers]busybox",
        ),
        ("dir:/some/dir/blah", Transport.DIR, "/some/dir/blah"),
    ],
)
def test_parse_splits_transport_and_name(text: str, transport: Transport, name: str) -> None:
    ref = ImageReference.parse(text)
    assert (ref.transport, ref.name) == (transport, name)


@pytest.mark.parametrize(
    "text",
    [
        "host/repo:tag",
        "quay.io/fedora/fedora-bootc:41",
        "localhost:5000/x:tag",
        "127.0.0.1:5000/x/y@sha256:" + "a" * 64,
        "busybox",
    ],
)
def test_bare_name_is_a_registry_image(text: str) -> None:
    assert ImageReference.parse(text) == ImageReference(Transport.REGISTRY, text)


def test_registry_is_printed_as_docker_for_skopeo() -> None:
    ref = ImageReference.parse("registry:quay.io/exampleos/blah")
    assert str(ref) == "docker://quay.io/exampleos/blah"
    assert ref.to_skopeo() == "docker://quay.io/exampleos/blah"


@pytest.mark.parametrize(
    "text", ["oci:/dir:tag", "oci-archive:/f.tar", "containers-storage:name", "dir:/path"]
)
def test_other_transports_print_as_skopeo_takes_them(text: str) -> None:
    assert ImageReference.parse(text).to_skopeo() == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'Invalid image reference "": it is empty'),
        (
            "foo:bar",
            'Invalid image reference "foo:bar": unknown transport "foo"'
            " (for a registry image, write docker://foo:bar)",
        ),
        ("foo://", 'Invalid image reference "foo://": unknown transport "foo"'),
        (
            "docker:blah",
            'Invalid image reference "docker:blah": expected "docker://" before the image name',
        ),
        ("registry:", 'Invalid image reference "registry:": the image name is empty'),
        ("docker://", 'Invalid image reference "docker://": the image name is empty'),
        ("oci:", 'Invalid image reference "oci:": the image name is empty'),
        (
            "docker://quay.io/Upper/case",
            'Invalid image reference "docker://quay.io/Upper/case":'
            ' "quay.io/Upper/case" is not a valid registry image name',
        ),
        (
            "localhost:port/x",
            'Invalid image reference "localhost:port/x": unknown transport "localhost"',
        ),
        (
            "containers-storage:[overlay@/x",
            'Invalid image reference "containers-storage:[overlay@/x":'
            ' the storage specifier "[...]" is not closed',
        ),
        (
            "oci:/dir\n[origin]",
            'Invalid image reference "oci:/dir\n[origin]":'
            " the image name contains a control character",
        ),
    ],
)
def test_malformed_reference_is_refused_with_reason(text: str, message: str) -> None:
    with pytest.raises(BootcError) as err:
        ImageReference.parse(text)
    assert str(err.value) == message


def test_overlong_repository_name_is_refused() -> None:
    with pytest.raises(BootcError, match="longer than 255"):
        ImageReference.parse("docker://quay.io/" + "a" * 250 + ":tag")


def test_from_name_and_transport_takes_bootc_transport_names() -> None:
    ref = ImageReference.from_name_and_transport("host/repo:tag", "registry")
    assert ref == ImageReference(Transport.REGISTRY, "host/repo:tag")
    assert ref.to_skopeo() == "docker://host/repo:tag"
    assert ImageReference.from_name_and_transport("/d:t", Transport.OCI).to_skopeo() == "oci:/d:t"


def test_from_name_and_transport_accepts_a_short_name_with_tag() -> None:
    # With the transport given, `busybox:latest` cannot be mistaken for a transport.
    ref = ImageReference.from_name_and_transport("busybox:latest", "registry")
    assert ref.name == "busybox:latest"


def test_from_name_and_transport_refuses_unknown_transport() -> None:
    with pytest.raises(BootcError) as err:
        ImageReference.from_name_and_transport("x", "ftp")
    assert str(err.value) == (
        'Invalid transport "ftp": expected one of registry, oci, oci-archive,'
        " docker-archive, containers-storage, dir"
    )


def test_from_name_and_transport_validates_the_name() -> None:
    with pytest.raises(BootcError) as err:
        ImageReference.from_name_and_transport("docker://x", "registry")
    assert str(err.value) == (
        'Invalid image reference "docker://docker://x":'
        ' "docker://x" is not a valid registry image name'
    )


def test_constructor_validates_like_parse() -> None:
    with pytest.raises(BootcError, match="the image name is empty"):
        ImageReference(Transport.OCI, "")


@pytest.mark.parametrize(
    ("text", "sigverify", "imgref", "printed"),
    [
        (
            "ostree-unverified-registry:host/repo:tag",
            SignatureSource.insecure(),
            ImageReference(Transport.REGISTRY, "host/repo:tag"),
            "ostree-unverified-registry:host/repo:tag",
        ),
        (
            "ostree-unverified-image:docker://quay.io/exampleos/blah",
            SignatureSource.insecure(),
            ImageReference(Transport.REGISTRY, "quay.io/exampleos/blah"),
            "ostree-unverified-registry:quay.io/exampleos/blah",
        ),
        (
            "ostree-unverified-image:oci:/dir:tag",
            SignatureSource.insecure(),
            ImageReference(Transport.OCI, "/dir:tag"),
            "ostree-unverified-image:oci:/dir:tag",
        ),
        (
            "ostree-image-signed:docker://quay.io/exampleos/blah",
            SignatureSource.container_policy(),
            ImageReference(Transport.REGISTRY, "quay.io/exampleos/blah"),
            "ostree-image-signed:docker://quay.io/exampleos/blah",
        ),
        (
            "ostree-remote-image:myremote:registry:quay.io/exampleos/blah",
            SignatureSource.ostree_remote("myremote"),
            ImageReference(Transport.REGISTRY, "quay.io/exampleos/blah"),
            "ostree-remote-image:myremote:docker://quay.io/exampleos/blah",
        ),
        (
            "ostree-remote-registry:myremote:quay.io/exampleos/blah",
            SignatureSource.ostree_remote("myremote"),
            ImageReference(Transport.REGISTRY, "quay.io/exampleos/blah"),
            "ostree-remote-image:myremote:docker://quay.io/exampleos/blah",
        ),
        (
            "docker://localhost:5000/x:tag",
            SignatureSource.insecure(),
            ImageReference(Transport.REGISTRY, "localhost:5000/x:tag"),
            "ostree-unverified-registry:localhost:5000/x:tag",
        ),
        (
            "containers-storage:localhost/bootc",
            SignatureSource.insecure(),
            ImageReference(Transport.CONTAINERS_STORAGE, "localhost/bootc"),
            "ostree-unverified-image:containers-storage:localhost/bootc",
        ),
    ],
)
def test_ostree_reference_forms(
    text: str, sigverify: SignatureSource, imgref: ImageReference, printed: str
) -> None:
    ref = OstreeImageReference.parse(text)
    assert ref == OstreeImageReference(sigverify, imgref)
    assert str(ref) == printed
    assert OstreeImageReference.parse(printed) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ostree-foo:docker://x/y", 'unknown scheme "ostree-foo"'),
        ("ostree-image-signed", 'missing ":" after "ostree-image-signed"'),
        (
            "ostree-image-signed:quay.io/x/y",
            'no transport before "quay.io/x/y" (for a registry image, write docker://quay.io/x/y)',
        ),
        (
            "ostree-unverified-image:quay.io/x:t",
            'unknown transport "quay.io/x" (for a registry image, write docker://quay.io/x:t)',
        ),
        ("ostree-remote-image:myremote", 'missing ":" after the ostree remote name'),
        ("ostree-remote-registry::quay.io/x", 'invalid ostree remote name ""'),
        ("ostree-remote-registry:my/remote:quay.io/x", 'invalid ostree remote name "my/remote"'),
        ("ostree-unverified-registry:", "the image name is empty"),
        ("ostree-image-signed:", "the image reference is empty"),
    ],
)
def test_malformed_ostree_reference_is_refused(text: str, message: str) -> None:
    with pytest.raises(BootcError) as err:
        OstreeImageReference.parse(text)
    assert str(err.value) == f'Invalid image reference "{text}": {message}'


def test_signature_source_remote_goes_with_remote_kind_only() -> None:
    with pytest.raises(BootcError):
        SignatureSource(SignatureKind.OSTREE_REMOTE)
    with pytest.raises(BootcError):
        SignatureSource(SignatureKind.INSECURE, "remote")
    assert str(SignatureSource.ostree_remote("fedora")) == "ostree-remote-image:fedora"
    assert str(SignatureSource.container_policy()) == "ostree-image-signed"


# Strategies built from the docker reference grammar and the other transports' forms.
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_path_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_domain = st.builds(
    lambda labels, port: ".".join(labels) + (f":{port}" if port is not None else ""),
    st.lists(
        st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?", fullmatch=True),
        min_size=1,
        max_size=3,
    ),
    st.none() | st.integers(1, 65535),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.builds(lambda h: f"sha256:{h}", st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
registry_names = st.builds(
    lambda domain, path, tag, digest: (
        (f"{domain}/" if domain else "")
        + "/".join(path)
        + (f":{tag}" if tag else "")
        + (f"@{digest}" if digest else "")
    ),
    st.none() | _domain,
    st.lists(_path_component, min_size=1, max_size=3),
    st.none() | _tag,
    st.none() | _digest,
)
_path = st.from_regex(r"/?[A-Za-z0-9._-]+(/[A-Za-z0-9._:-]+){0,3}", fullmatch=True)
local_references = st.one_of(
    st.builds(ImageReference, st.just(Transport.OCI), _path),
    st.builds(ImageReference, st.just(Transport.OCI_ARCHIVE), _path),
    st.builds(ImageReference, st.just(Transport.DOCKER_ARCHIVE), _path),
    st.builds(ImageReference, st.just(Transport.DIR), _path),
    st.builds(ImageReference, st.just(Transport.CONTAINERS_STORAGE), registry_names),
)
image_references = st.builds(ImageReference, st.just(Transport.REGISTRY), registry_names) | (
    local_references
)
signature_sources = st.one_of(
    st.just(SignatureSource.insecure()),
    st.just(SignatureSource.container_policy()),
    st.builds(
        SignatureSource.ostree_remote,
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    ),
)


@given(image_references)
def test_image_reference_round_trips(ref: ImageReference) -> None:
    assert ImageReference.parse(str(ref)) == ref
    assert ImageReference.parse(ref.to_skopeo()) == ref


@given(registry_names)
def test_registry_and_docker_spellings_agree(name: str) -> None:
    assert ImageReference.parse(f"registry:{name}") == ImageReference.parse(f"docker://{name}")


@given(signature_sources, image_references)
def test_ostree_image_reference_round_trips(
    sigverify: SignatureSource, imgref: ImageReference
) -> None:
    ref = OstreeImageReference(sigverify, imgref)
    assert OstreeImageReference.parse(str(ref)) == ref


@given(st.text(max_size=40))
def test_any_text_parses_or_fails_with_bootc_error(text: str) -> None:
    for parse in (ImageReference.parse, OstreeImageReference.parse):
        try:
            parsed = parse(text)
        except BootcError as err:
            assert str(err).startswith(f'Invalid image reference "{text}": ')
        else:
            assert type(parsed).parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "alternate", "spec_form"),
    [
        (
            "ostree-unverified-registry:quay.io/x/os:1",
            "docker://quay.io/x/os:1",
            "quay.io/x/os:1",
        ),
        (
            "ostree-image-signed:docker://quay.io/x/os:1",
            "ostree-image-signed:docker://quay.io/x/os:1",
            "ostree-image-signed:docker://quay.io/x/os:1",
        ),
        (
            "ostree-unverified-image:oci:/srv/layout:v2",
            "ostree-unverified-image:oci:/srv/layout:v2",
            "ostree-unverified-image:oci:/srv/layout:v2",
        ),
    ],
)
def test_the_forms_upstream_prints(text: str, alternate: str, spec_form: str) -> None:
    imgref = OstreeImageReference.parse(text)
    assert (imgref.alternate(), imgref.spec_form()) == (alternate, spec_form)

"""Image references: which image, through which transport, verified how.

Parses and prints the forms that bootc and ostree-ext accept (`docker://host/repo:tag`,
`oci:/dir:tag`, `ostree-unverified-registry:...`, `ostree-remote-image:R:...`), so that
the command line, origin files and skopeo all see the same strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pybootc.errors import BootcError


class Transport(StrEnum):
    """Where an image lives; the value is bootc's name for it (`--transport`)."""

    REGISTRY = "registry"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    CONTAINERS_STORAGE = "containers-storage"
    DIR = "dir"

    @property
    def prefix(self) -> str:
        """The prefix skopeo and ostree-ext write before the image name."""
        # skopeo 1.9 has no `registry:` transport, so registry is always printed
        # as `docker://`, as ostree-ext does.
        return "docker://" if self is Transport.REGISTRY else f"{self.value}:"

    @classmethod
    def from_name(cls, name: str) -> Transport:
        """The transport `name` (as given to `--transport`) stands for."""
        if name == "docker":
            return cls.REGISTRY
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(t.value for t in cls)
            raise BootcError(f'Invalid transport "{name}": expected one of {choices}') from None


# The docker reference grammar (distribution/reference) that registry names follow.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REGISTRY_NAME = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
)
# Repository names longer than this are refused by registries and by containers/image.
_MAX_REPOSITORY_LENGTH = 255
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# `docker` is how skopeo spells the registry transport (`docker://`).
_TRANSPORT_NAMES = frozenset({*(t.value for t in Transport), "docker"})
# What libostree's ostree_validate_remote_name() accepts.
_REMOTE_NAME = re.compile(r"[\w][-._\w]*", re.ASCII)


def _invalid(text: str, reason: str) -> BootcError:
    return BootcError(f'Invalid image reference "{text}": {reason}')


def _name_problem(transport: Transport, name: str) -> str | None:
    """Why `name` cannot be an image name for `transport`, or None if it can."""
    if not name:
        return "the image name is empty"
    # Origin files are keyfiles, one reference a line: a newline would split it.
    if _CONTROL_CHARACTER.search(name):
        return "the image name contains a control character"
    if transport is Transport.REGISTRY:
        if not _REGISTRY_NAME.fullmatch(name):
            return f'"{name}" is not a valid registry image name'
        if len(_repository(name)) > _MAX_REPOSITORY_LENGTH:
            return f"the repository name is longer than {_MAX_REPOSITORY_LENGTH} characters"
    elif transport is Transport.CONTAINERS_STORAGE and name.startswith("["):
        spec, bracket, image = name[1:].partition("]")
        if not bracket or not spec:
            return 'the storage specifier "[...]" is not closed'
        if not image:
            return "the image name after the storage specifier is empty"
    return None


def _repository(name: str) -> str:
    """`name` without its tag and digest."""
    name = name.partition("@")[0]
    before, colon, tag = name.rpartition(":")
    return before if colon and "/" not in tag else name


def _looks_like_bare_registry_name(text: str) -> bool:
    # A colon in the first path component is either a transport (`oci:/x`, `foo:bar`)
    # or a registry port (`localhost:5000/x:tag`). Only the port form has digits
    # between the colon and a slash.
    first, slash, _ = text.partition("/")
    if ":" not in first:
        return True
    return bool(slash) and re.fullmatch(r"[^:@]+:[0-9]+", first) is not None


@dataclass(frozen=True)
class ImageReference:
    """An image name and the transport that reaches it (`docker://quay.io/x/y:tag`)."""

    transport: Transport
    name: str

    def __post_init__(self) -> None:
        problem = _name_problem(self.transport, self.name)
        if problem:
            raise _invalid(f"{self.transport.prefix}{self.name}", problem)

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse `TRANSPORT:NAME` or `docker://NAME`; a bare `host/repo:tag` is a registry."""
        if not text:
            raise _invalid(text, "it is empty")
        head, colon, _ = text.partition(":")
        if colon and head in _TRANSPORT_NAMES:
            return _parse_with_transport(text, text)
        if _looks_like_bare_registry_name(text):
            return cls._checked(Transport.REGISTRY, text, text)
        raise _unknown_transport(text, text)

    @classmethod
    def from_name_and_transport(cls, name: str, transport: Transport | str) -> ImageReference:
        """The image `name` reached through `transport`, as `--transport T NAME` says."""
        if isinstance(transport, str) and not isinstance(transport, Transport):
            transport = Transport.from_name(transport)
        return cls._checked(transport, name, f"{transport.prefix}{name}")

    @classmethod
    def _checked(cls, transport: Transport, name: str, text: str) -> ImageReference:
        problem = _name_problem(transport, name)
        if problem:
            raise _invalid(text, problem)
        return cls(transport, name)

    def __str__(self) -> str:
        return f"{self.transport.prefix}{self.name}"

    def to_skopeo(self) -> str:
        """The reference in the syntax skopeo (and its image proxy) accepts."""
        return str(self)

    def with_tag(self, tag: str) -> ImageReference:
        """The same image name with `tag` instead of its tag or digest (`upgrade --tag`)."""
        if not re.fullmatch(_TAG, tag):
            raise BootcError(f'Invalid tag "{tag}": it must match {_TAG}')
        if self.transport in (Transport.REGISTRY, Transport.CONTAINERS_STORAGE):
            repo = self.name.split("@", 1)[0]
            last = repo.rsplit("/", 1)[-1]
            if ":" in last:
                repo = repo[: repo.rindex(":")]
        elif self.transport is Transport.OCI:
            repo = self.name.rsplit(":", 1)[0] if ":" in self.name else self.name
        else:
            raise BootcError(
                f"--tag needs an image that has tags: {self} is a {self.transport.value} image"
            )
        return ImageReference._checked(self.transport, f"{repo}:{tag}", f"{self}")


def _parse_with_transport(text: str, whole: str) -> ImageReference:
    """Parse `text`, which must start with a transport; errors quote `whole`."""
    head, colon, name = text.partition(":")
    if not colon or head not in _TRANSPORT_NAMES:
        raise _unknown_transport(text, whole)
    if head == "docker":
        if not name.startswith("//"):
            raise _invalid(whole, 'expected "docker://" before the image name')
        name = name[2:]
    return ImageReference._checked(Transport.from_name(head), name, whole)


def _unknown_transport(text: str, whole: str) -> BootcError:
    if not text:
        return _invalid(whole, "the image reference is empty")
    head, colon, _ = text.partition(":")
    reason = f'unknown transport "{head}"' if colon else f'no transport before "{text}"'
    if _REGISTRY_NAME.fullmatch(text):
        reason += f" (for a registry image, write docker://{text})"
    return _invalid(whole, reason)


class SignatureKind(StrEnum):
    """How a pulled image is verified; the value is its ostree-ext scheme."""

    INSECURE = "ostree-unverified-image"
    CONTAINER_POLICY = "ostree-image-signed"
    OSTREE_REMOTE = "ostree-remote-image"


@dataclass(frozen=True)
class SignatureSource:
    """A verification kind, plus the ostree remote whose keys verify, for OSTREE_REMOTE."""

    kind: SignatureKind
    remote: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not SignatureKind.OSTREE_REMOTE:
            if self.remote is not None:
                raise BootcError(f"Signature source {self.kind} takes no ostree remote")
        elif self.remote is None or not _REMOTE_NAME.fullmatch(self.remote):
            raise BootcError(f'Invalid ostree remote name "{self.remote or ""}"')

    @classmethod
    def insecure(cls) -> SignatureSource:
        return cls(SignatureKind.INSECURE)

    @classmethod
    def container_policy(cls) -> SignatureSource:
        return cls(SignatureKind.CONTAINER_POLICY)

    @classmethod
    def ostree_remote(cls, remote: str) -> SignatureSource:
        return cls(SignatureKind.OSTREE_REMOTE, remote)

    def __str__(self) -> str:
        if self.remote is not None:
            return f"{self.kind.value}:{self.remote}"
        return self.kind.value


@dataclass(frozen=True)
class OstreeImageReference:
    """An image reference plus how to verify it, as origin files store it."""

    sigverify: SignatureSource
    imgref: ImageReference

    @classmethod
    def parse(cls, text: str) -> OstreeImageReference:
        """Parse an `ostree-*:` reference; a plain image reference means unverified.

        bootc treats an image without a signature policy as `ostree-unverified-*`,
        so `docker://x` and `ostree-unverified-registry:x` parse to the same value.
        """
        scheme, colon, rest = text.partition(":")
        if not scheme.startswith("ostree-"):
            return cls(SignatureSource.insecure(), ImageReference.parse(text))
        if not colon:
            raise _invalid(text, f'missing ":" after "{scheme}"')
        if scheme == SignatureKind.CONTAINER_POLICY:
            return cls(SignatureSource.container_policy(), _parse_with_transport(rest, text))
        if scheme == SignatureKind.INSECURE:
            return cls(SignatureSource.insecure(), _parse_with_transport(rest, text))
        if scheme == "ostree-unverified-registry":
            imgref = ImageReference._checked(Transport.REGISTRY, rest, text)
            return cls(SignatureSource.insecure(), imgref)
        if scheme in (SignatureKind.OSTREE_REMOTE, "ostree-remote-registry"):
            remote, colon, rest = rest.partition(":")
            if not colon:
                raise _invalid(text, 'missing ":" after the ostree remote name')
            if not _REMOTE_NAME.fullmatch(remote):
                raise _invalid(text, f'invalid ostree remote name "{remote}"')
            if scheme == SignatureKind.OSTREE_REMOTE:
                imgref = _parse_with_transport(rest, text)
            else:
                imgref = ImageReference._checked(Transport.REGISTRY, rest, text)
            return cls(SignatureSource.ostree_remote(remote), imgref)
        raise _invalid(text, f'unknown scheme "{scheme}"')

    def _unverified_registry(self) -> bool:
        return (
            self.sigverify.kind is SignatureKind.INSECURE
            and self.imgref.transport is Transport.REGISTRY
        )

    def __str__(self) -> str:
        # ostree-ext prints the common case in its short form; it parses back the same.
        if self._unverified_registry():
            return f"ostree-unverified-registry:{self.imgref.name}"
        return f"{self.sigverify}:{self.imgref}"

    def alternate(self) -> str:
        """ostree-ext's alternate form (`{:#}`), which `upgrade --check` prints: a
        registry image pulled unverified as `docker://NAME`, anything else in full."""
        return str(self.imgref) if self._unverified_registry() else str(self)

    def spec_form(self) -> str:
        """How upstream names the image it queued (`{:#}` of the spec's reference): a
        registry image pulled unverified by its name alone, anything else in full."""
        return self.imgref.name if self._unverified_registry() else str(self)

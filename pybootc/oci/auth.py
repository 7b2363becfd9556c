"""Registry credentials, as bootc finds them: its own auth.json, or none at all.

bootc never uses the invoking user's podman or docker credentials, nor
$REGISTRY_AUTH_FILE: the OS of a host is fetched with the host's credentials. So
the file found here is passed to every skopeo call that reads an image, and with
no file the call is anonymous (`--no-creds`), which keeps skopeo from searching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Upstream's order: runtime, then the host's configuration, then the image's default.
AUTHFILES = (
    Path("run/ostree/auth.json"),
    Path("etc/ostree/auth.json"),
    Path("usr/lib/ostree/auth.json"),
)


@dataclass(frozen=True)
class RegistryAuth:
    """The credentials file for pulls, or None for anonymous ones."""

    authfile: Path | None = None

    @classmethod
    def find(cls, root: Path) -> RegistryAuth:
        """The first of AUTHFILES under `root` (a booted host's `/`, or the root of the
        deployment whose system is being updated)."""
        return cls(next((root / p for p in AUTHFILES if (root / p).is_file()), None))

    def options(self) -> list[str]:
        """For skopeo inspect and the image proxy."""
        return ["--authfile", str(self.authfile)] if self.authfile else ["--no-creds"]

    def source_options(self) -> list[str]:
        """For the source side of skopeo copy."""
        return ["--src-authfile", str(self.authfile)] if self.authfile else ["--src-no-creds"]


ANONYMOUS = RegistryAuth()

"""Shared test machinery: the kernel oracle and the loopback registry.

The oracle pulls an image into a scratch containers-storage (overlay driver),
mounts it with `podman image mount`, and lists the kernel's merged view; the
same image is then flattened by both of pybootc's sources and compared.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zstandard

from pybootc.commands.flatten import Source, flatten_image
from pybootc.errors import BootcError
from pybootc.host.model import Host
from pybootc.layers.flatten import flatten_diff_dirs
from pybootc.layers.listing import ListedEntry, diff_listings, list_tree
from pybootc.oci.imgref import ImageReference, OstreeImageReference, SignatureSource
from pybootc.oci.metadata import fetch_image_metadata
from pybootc.ostree.gi import OSTree
from pybootc.sample.ocibuild import ImageSpec, Layer, OciLayout
from pybootc.stores.container import read_stored_layer
from pybootc.stores.containers_storage import ContainersStorage
from pybootc.stores.layered import LayeredImage, layer_commit
from pybootc.stores.ostree import import_layers
from tests.object_support import corrupt_objects, new_bare_repo

Tree = list[ListedEntry]
# shared/ lies beside the checkout, for developers and for CI alike.
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
REGISTRIES_DROPIN_DIR = Path("/etc/containers/registries.conf.d")
UPSTREAM_FIXTURE_DIR = SHARED_REFERENCE / "upstream-bootc"
# Upstream's Host documents, as its golden tests have them.
FIXTURE_NAMES = sorted(p.name for p in UPSTREAM_FIXTURE_DIR.glob("spec-*"))
# The one user of the private test registry.
LOGIN = ("pybootc", "s3cret-for-tests")


def acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    """A system.posix_acl_* value: the version, then (tag, rwx, id) entries."""
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL_OWNER, ACL_USER, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_NO_ID = 0xFFFFFFFF
# Access ACLs: one the mode can say (rwx, r-x, ---), and one with a named user and a mask.
ACL_AS_MODE_750 = acl(
    (ACL_OWNER, 7, ACL_NO_ID), (ACL_GROUP, 5, ACL_NO_ID), (ACL_OTHER, 0, ACL_NO_ID)
)
ACL_EXTENDED = acl(
    (ACL_OWNER, 6, ACL_NO_ID),
    (ACL_USER, 6, 1000),
    (ACL_GROUP, 4, ACL_NO_ID),
    (ACL_MASK, 6, ACL_NO_ID),
    (ACL_OTHER, 4, ACL_NO_ID),
)


def tar_header(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> bytes:
    """One member's header blocks as a tar writer writes them (PAX with `pax=` records,
    ustar without), for a layer given raw (`Layer.raw`)."""
    info = tarfile.TarInfo(name)
    info.type, info.mtime = kind, 1_700_000_000
    pax = fields.pop("pax", None)
    for key, value in fields.items():
        setattr(info, key, value)
    if pax is None:
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    info.pax_headers = pax  # type: ignore[assignment]
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True)
class Outcome:
    """What the kernel and each of pybootc's ways of reading an image made of it: the
    two flatten sources, and the two layer-commit paths an install takes (the ostree
    backend's from the blobs, the container backend's from the storage), merged and
    checked out."""

    kernel: Tree | str
    blobs: Tree | str
    storage: Tree | str
    committed_blobs: Tree | str
    committed_storage: Tree | str

    def sources(self) -> dict[str, Tree | str]:
        return {
            "blobs": self.blobs,
            "containers-storage": self.storage,
            "blob layer commits": self.committed_blobs,
            "storage layer commits": self.committed_storage,
        }

    def assert_agree(self) -> None:
        if isinstance(self.kernel, str):
            for name in ("blobs", "blob layer commits"):
                refused = self.sources()[name]
                assert isinstance(refused, str), f"kernel refused ({self.kernel}); {name} did not"
            return
        for name, tree in self.sources().items():
            assert not isinstance(tree, str), f"{name} failed: {tree}"
            kernel = without_link_groups(self.kernel) if "commits" in name else self.kernel
            diff = diff_listings(kernel, tree)
            assert not diff, f"{name} differs from the kernel:\n" + "\n".join(diff)


def without_link_groups(tree: Tree) -> Tree:
    """OSTree keeps no hardlink identity (identical files share one object)."""
    return [dataclasses.replace(e, link_group=None) for e in tree]


class Oracle:
    """A scratch storage and OCI layout for comparing trees with the kernel's view."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.layout = OciLayout(workdir / "oci")
        self.storage = ContainersStorage(workdir / "storage", workdir / "runroot")
        self._names = itertools.count()
        self._repos: dict[Source, OSTree.Repo] = {}

    def add(self, layers: Sequence[Layer], **spec: object) -> str:
        tag = f"case{next(self._names)}"
        self.layout.add_image(tag, ImageSpec(tuple(layers), **spec))  # type: ignore[arg-type]
        return tag

    def kernel_view(self, tag: str, source: str = "") -> Tree | str:
        """The image as the kernel's overlayfs shows it once pulled from `source` (by
        default the layout) into the storage as localhost/TAG."""
        name = f"localhost/{tag}:latest"
        try:
            self.storage.pull(source or self.layout.ref(tag), name)
        except BootcError as err:
            return str(err)
        mountpoint = self.storage.mount(name)
        try:
            return list_tree(mountpoint)
        finally:
            self.storage.unmount(name)

    def flatten(self, tag: str, source: Source, image: str = "") -> Tree | str:
        out = self.workdir / f"out-{tag}-{source}"
        try:
            if source is Source.BLOBS:
                flatten_image(image or self.layout.ref(tag), out, source=source)
            else:
                layers = self.storage.image_layers(f"localhost/{tag}:latest")
                flatten_diff_dirs(
                    [layer.diff_dir for layer in layers],
                    out,
                    markers=[layer.markers for layer in layers],
                )
        except BootcError as err:
            assert not out.exists(), "a failed flatten left its output behind"
            return str(err)
        try:
            return list_tree(out)
        finally:
            shutil.rmtree(out)

    def committed(self, tag: str, source: Source, image: str = "") -> Tree | str:
        """The image as an install commits it: each layer into a commit of a repo of
        `source`'s own (from its blob, or from the storage as the container backend
        reads it), the commits merged and checked out; its hardlinks left out."""
        repo = self._repos.get(source)
        if repo is None:
            repo = self._repos[source] = new_bare_repo(self.workdir / f"repo-{source}")
        imgref = OstreeImageReference(
            SignatureSource.insecure(), ImageReference.parse(image or self.layout.ref(tag))
        )
        metadata = fetch_image_metadata(imgref.imgref)
        work = Path(tempfile.mkdtemp(prefix=f"committed-{tag}-", dir=self.workdir))
        try:
            if source is Source.BLOBS:
                imported = import_layers(repo, imgref, metadata, work)
            else:
                layers = self.storage.image_layers(f"localhost/{tag}:latest")
                commits = tuple(
                    layer_commit(
                        repo,
                        layer.digest,
                        functools.partial(read_stored_layer, self.storage, layer),
                        None,
                    )
                    for layer in layers
                )
                imported = LayeredImage(repo, commits, metadata)
            for commit in imported.layers:
                corrupt = corrupt_objects(repo, commit)
                assert not corrupt, f"{source}: objects that fail fsck: {corrupt}"
            imported.flatten(work / "root")
            return without_link_groups(list_tree(work / "root"))
        except BootcError as err:
            return str(err)
        finally:
            shutil.rmtree(work)

    def _outcome(self, tag: str, image: str = "") -> Outcome:
        kernel = self.kernel_view(tag, image)
        blobs = self.flatten(tag, Source.BLOBS, image)
        committed_blobs = self.committed(tag, Source.BLOBS, image)
        if isinstance(kernel, str):
            return Outcome(kernel, blobs, kernel, committed_blobs, kernel)
        return Outcome(
            kernel,
            blobs,
            self.flatten(tag, Source.CONTAINERS_STORAGE),
            committed_blobs,
            self.committed(tag, Source.CONTAINERS_STORAGE, image),
        )

    def compare(self, layers: Sequence[Layer], **spec: object) -> Outcome:
        return self._outcome(self.add(layers, **spec))

    def compare_partially_pulled(self, layers: Sequence[Layer], registry: Registry) -> Outcome:
        """`compare` for the image pushed to `registry` with zstd:chunked layers, which
        the storage pulls partially: its files from the table of contents and chunks."""
        tag = self.add(layers)
        image = f"docker://{registry.address}/oracle/{tag}:chunked"
        push_zstd_chunked(self.layout.ref(tag), image, self.workdir)
        return self._outcome(tag, image)

    def close(self) -> None:
        self.storage.reset()
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    address: str  # 127.0.0.1:PORT
    log_path: Path

    def requests(self) -> list[str]:
        """Request lines seen so far, such as `GET /v2/x/blobs/sha256:...`."""
        text = self.log_path.read_text(errors="replace")
        return re.findall(r'"((?:GET|HEAD|PUT|POST|PATCH|DELETE) /v2/[^ ]*)', text)


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate for 127.0.0.1, signed by a throwaway CA."""

    ca: Path
    cert: Path
    key: Path


def make_server_certificate(workdir: Path) -> ServerCertificate:
    """A CA, and a certificate for IP 127.0.0.1 that it signs (openssl)."""
    ca_key, ca, key, csr, cert = (
        workdir / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = workdir / "server.ext"
    # Python 3.13's default context (VERIFY_X509_STRICT) wants more than Go's TLS: the
    # CA's key usage, and the leaf's key identifier of the CA that signed it.
    ext.write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "authorityKeyIdentifier = keyid, issuer\n"
    )
    argvs: list[list[str | Path]] = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=pybootc test CA", "-addext", "keyUsage = critical, keyCertSign, cRLSign",
         "-keyout", ca_key, "-out", ca],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", key, "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", cert],
    ]  # fmt: skip
    for argv in argvs:
        subprocess.run(argv, capture_output=True, check=True)
    return ServerCertificate(ca, cert, key)


@contextmanager
def running_registry(
    login: tuple[str, str] | None = None, tls: ServerCertificate | None = None
) -> Iterator[Registry]:
    """Debian's docker-registry on a free loopback port, its access log kept; with
    `login` (user, password), only that user gets in (htpasswd, bcrypt). Without `tls`
    it speaks plain HTTP, allowed for it alone by a registries.conf drop-in."""
    workdir = Path(tempfile.mkdtemp(prefix="pybootc-registry-"))
    port = free_port()
    config = workdir / "config.yml"
    extra = ""
    if login is not None:
        htpasswd = workdir / "htpasswd"
        subprocess.run(["htpasswd", "-Bbc", htpasswd, *login], capture_output=True, check=True)
        extra += f"auth: {{htpasswd: {{realm: pybootc-test, path: {htpasswd}}}}}\n"
    listen = f"addr: '127.0.0.1:{port}'"
    if tls is not None:
        listen += f", tls: {{certificate: {tls.cert}, key: {tls.key}}}"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}}}\n"
        f"http: {{{listen}}}\n" + extra
    )
    log_path = workdir / "access.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log_file, stderr=log_file
    )
    address = f"127.0.0.1:{port}"
    scheme = "https" if tls else "http"
    context = ssl.create_default_context(cafile=str(tls.ca)) if tls else None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"{scheme}://{address}/v2/", timeout=1, context=context
                ):
                    break
            except urllib.error.HTTPError:
                break  # 401 from a registry that wants a login: it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.05)
        # Plain HTTP for this loopback registry only, the way an operator would
        # allow an insecure registry: skopeo 1.9.3 ignores CONTAINERS_REGISTRIES_CONF.
        dropin = REGISTRIES_DROPIN_DIR / f"pybootc-test-{port}.conf"
        if tls is None:
            REGISTRIES_DROPIN_DIR.mkdir(parents=True, exist_ok=True)
            dropin.write_text(f'[[registry]]\nlocation = "{address}"\ninsecure = true\n')
        try:
            yield Registry(address, log_path)
        finally:
            dropin.unlink(missing_ok=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _uncompressed_digest(blob: Path) -> str:
    """sha256 of a zstd blob's content, read across all its frames (zstd:chunked has one
    per file, and skippable frames for its table of contents)."""
    digest = hashlib.sha256()
    with blob.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def push_zstd_chunked(source: str, dest: str, workdir: Path) -> None:
    """Push the image `source` to `dest` (skopeo references) with zstd:chunked layers.

    skopeo 1.9.3 re-tars each layer as it compresses it (it drops the end-of-archive
    padding) and keeps the config's diff_ids, which then no longer match; they are set
    right here, as a correct build has them, before the image is pushed.
    """
    layout = workdir / "zstd-chunked"
    shutil.rmtree(layout, ignore_errors=True)
    copy = ["skopeo", "copy", "--quiet"]
    # skopeo 1.9.3's zstd:chunked writer can hang (idle, in a futex) on a layer it
    # cannot re-tar, such as one with a PAX global header: bounded, that is a failure.
    subprocess.run(
        [*copy, "--dest-compress-format", "zstd:chunked", source, f"oci:{layout}:image"],
        check=True,
        timeout=300,
    )
    index = json.loads((layout / "index.json").read_bytes())

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def put(document: dict[str, object], descriptor: dict[str, object]) -> None:
        raw = json.dumps(document).encode()
        digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
        blob(digest).write_bytes(raw)
        descriptor.update(digest=digest, size=len(raw))

    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    config["rootfs"]["diff_ids"] = [
        _uncompressed_digest(blob(layer["digest"])) for layer in manifest["layers"]
    ]
    put(config, manifest["config"])
    put(manifest, index["manifests"][0])
    (layout / "index.json").write_text(json.dumps(index))
    subprocess.run([*copy, f"oci:{layout}:image", dest], check=True)


def tree_snapshot(path: Path) -> Tree:
    """A listing that also covers the root, for checking nothing changed."""
    return list_tree(path, include_root=True) if os.path.exists(path) else []


def host_schema(*, with_container_store: bool) -> dict[str, object]:
    """bootc's host-v1 schema; optionally with the one value pybootc adds to `Store`.

    Upstream's schema knows a single store, "ostreeContainer". pybootc reports
    deployments of its container backend as "containerStorage": the only
    difference from upstream's document, and the only change made here.
    """
    import json

    schema: dict[str, object] = json.loads(
        (SHARED_REFERENCE / "upstream-bootc" / "host-v1.schema.json").read_text()
    )
    if with_container_store:
        store = schema["$defs"]["Store"]  # type: ignore[index]
        store["oneOf"].append({"type": "string", "const": "containerStorage"})
    return schema


def fixture_host(name: str) -> Host:
    """The upstream status fixture `name` (shared/reference/upstream-bootc), read as
    bootc reads it."""
    text = (UPSTREAM_FIXTURE_DIR / name).read_text()
    return Host.from_json(text) if name.endswith(".json") else Host.from_yaml(text)

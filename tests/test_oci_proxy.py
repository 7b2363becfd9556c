"""The image-proxy client against the real skopeo, on small OCI layouts written here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import signal
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from pybootc.errors import BootcError
from pybootc.oci.auth import RegistryAuth
from pybootc.oci.model import ImageConfig, LayerCompression, Manifest, manifest_digest
from pybootc.oci.proxy import ImageProxy, OpenedImage, _clean_error

T = TypeVar("T")
# Larger than a pipe's default 64 KiB buffer, so that skopeo's writer must wait for us.
BLOB_SIZE = 100 * 1024


@dataclass
class Layout:
    """An OCI image layout on disk and what went into it."""

    path: Path
    tag: str
    manifest: bytes = b""
    config: bytes = b""
    layers: list[tuple[str, int]] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return f"oci:{self.path}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def add_blob(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
        self.blob_path(digest).write_bytes(data)
        return digest, len(data)


def tar_layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_layout(root: Path, layer_files: list[dict[str, bytes]], tag: str = "latest") -> Layout:
    """Write an OCI layout holding one image whose layers hold `layer_files`."""
    layout = Layout(root, tag)
    diff_ids = []
    for files in layer_files:
        tar = tar_layer(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        layout.layers.append(layout.add_blob(gzip.compress(tar, mtime=0)))
    layout.config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-05-01T12:00:00Z",
            "config": {"Labels": {"org.opencontainers.image.version": "1.0"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest, config_size = layout.add_blob(layout.config)
    layout.manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": size,
                }
                for digest, size in layout.layers
            ],
        }
    ).encode()
    manifest, manifest_size = layout.add_blob(layout.manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return write_layout(tmp_path / "image", [{"etc/os-release": b"ID=test\n"}, {"usr/x": b"x"}])


@pytest.fixture
def proxy() -> Iterator[ImageProxy]:
    with ImageProxy() as running:
        yield running


def within(seconds: float, proxy: ImageProxy, work: Callable[[], T]) -> T:
    """Run `work`, failing (instead of hanging) if it takes longer than `seconds`."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if proxy.pid is not None:
            os.kill(proxy.pid, signal.SIGKILL)  # unblocks the hung thread and the teardown
        pytest.fail(f"still running after {seconds} s: deadlocked?")
    if failure:
        raise failure[0]
    return outcome[0]


def read_blob(proxy: ImageProxy, image: OpenedImage, digest: str, size: int) -> bytes:
    with proxy.open_blob(image, digest, size) as stream:
        return stream.read()


def test_protocol_is_initialized(proxy: ImageProxy) -> None:
    assert proxy.protocol_version.startswith("0.2.")


def test_manifest_and_config_come_back_as_stored(proxy: ImageProxy, layout: Layout) -> None:
    image = proxy.open_image(layout.reference)
    raw, digest = proxy.fetch_manifest(image)
    assert raw == layout.manifest
    assert digest == manifest_digest(layout.manifest)
    manifest = Manifest.parse(raw)
    assert [(layer.digest, layer.size) for layer in manifest.layers] == layout.layers
    assert manifest.layers[0].compression is LayerCompression.GZIP
    config = ImageConfig.parse(proxy.fetch_config(image))
    assert config.version == "1.0"
    assert config.diff_ids == tuple(json.loads(layout.config)["rootfs"]["diff_ids"])
    assert config.raw == json.loads(layout.config)


def test_full_config_is_reserialized_but_its_blob_is_exact(
    proxy: ImageProxy, layout: Layout
) -> None:
    # GetFullConfig marshals skopeo's own copy of the config, so its bytes differ from
    # the blob the manifest names; the blob itself is there for byte-exact needs.
    image = proxy.open_image(layout.reference)
    manifest = Manifest.parse(proxy.fetch_manifest(image)[0])
    assert proxy.fetch_config(image) != layout.config
    assert read_blob(proxy, image, manifest.config.digest, manifest.config.size) == layout.config


def test_layer_blob_streams_as_stored(proxy: ImageProxy, layout: Layout) -> None:
    image = proxy.open_image(layout.reference)
    digest, size = layout.layers[0]
    with (
        proxy.open_blob(image, digest, size) as stream,
        tarfile.open(fileobj=stream, mode="r|gz") as tar,
    ):
        member = tar.next()
        assert member is not None and member.name == "etc/os-release"
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == b"ID=test\n"


def test_multi_megabyte_blob_streams_intact(proxy: ImageProxy, tmp_path: Path) -> None:
    noise = random.Random(0).randbytes(6 * 1024 * 1024)
    layout = write_layout(tmp_path / "big", [{"usr/lib/noise": noise}])
    image = proxy.open_image(layout.reference)
    digest, size = layout.layers[0]
    assert size > 6 * 1024 * 1024
    sha = hashlib.sha256()

    def stream_it() -> int:
        read = 0
        with proxy.open_blob(image, digest, size) as stream:
            while chunk := stream.read(65536):
                sha.update(chunk)
                read += len(chunk)
        return read

    assert within(60, proxy, stream_it) == size
    assert "sha256:" + sha.hexdigest() == digest


def test_many_blobs_in_sequence_do_not_deadlock(proxy: ImageProxy, layout: Layout) -> None:
    rng = random.Random(1)
    blobs = [layout.add_blob(rng.randbytes(BLOB_SIZE + i)) for i in range(150)]
    image = proxy.open_image(layout.reference)

    def fetch_all() -> None:
        for i, (digest, size) in enumerate(blobs):
            data = read_blob(proxy, image, digest, size)
            assert hashlib.sha256(data).hexdigest() == digest.removeprefix("sha256:")
            if i % 10 == 0:
                assert proxy.fetch_manifest(image)[0] == layout.manifest

    within(120, proxy, fetch_all)


def test_threads_sharing_a_proxy_take_turns(proxy: ImageProxy, layout: Layout) -> None:
    rng = random.Random(2)
    blobs = [layout.add_blob(rng.randbytes(BLOB_SIZE)) for _ in range(10)]
    errors: list[BaseException] = []

    def fetch_all() -> None:
        try:
            image = proxy.open_image(layout.reference)
            for digest, size in blobs * 3:
                assert len(read_blob(proxy, image, digest, size)) == size
            proxy.close_image(image)
        except BaseException as err:
            errors.append(err)

    def run_threads() -> None:
        threads = [threading.Thread(target=fetch_all) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    within(120, proxy, run_threads)
    assert errors == []


def test_missing_tag_is_a_clear_error(proxy: ImageProxy, layout: Layout) -> None:
    reference = f"oci:{layout.path}:nosuch"
    with pytest.raises(BootcError) as err:
        proxy.open_image(reference)
    assert (
        str(err.value) == f'Opening image {reference}: no descriptor found for reference "nosuch"'
    )


def test_nonexistent_directory_is_a_clear_error(proxy: ImageProxy, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(BootcError) as err:
        proxy.open_image(f"oci:{missing}:latest")
    assert str(err.value) == (
        f"Opening image oci:{missing}:latest: open {missing}/index.json: no such file or directory"
    )


def test_unknown_transport_is_reported_by_skopeo(proxy: ImageProxy) -> None:
    with pytest.raises(BootcError) as err:
        proxy.open_image("foo:bar")
    assert (
        str(err.value)
        == 'Opening image foo:bar: Invalid image name "foo:bar", unknown transport "foo"'
    )


def test_missing_blob_is_a_clear_error(proxy: ImageProxy, layout: Layout) -> None:
    image = proxy.open_image(layout.reference)
    digest = "sha256:" + "0" * 64
    with pytest.raises(BootcError) as err:
        read_blob(proxy, image, digest, 1)
    assert str(err.value) == (
        f"Fetching blob {digest} of {layout.reference}: "
        f"open {layout.blob_path(digest)}: no such file or directory"
    )


def test_corrupted_blob_fails_at_the_end_of_the_stream(proxy: ImageProxy, layout: Layout) -> None:
    digest, size = layout.layers[0]
    data = bytearray(layout.blob_path(digest).read_bytes())
    data[-1] ^= 0xFF
    layout.blob_path(digest).write_bytes(data)
    image = proxy.open_image(layout.reference)
    with proxy.open_blob(image, digest, size) as stream:
        assert stream.read(size) == data  # every byte arrives; the verdict comes at EOF
        with pytest.raises(BootcError) as err:
            stream.read()
    assert str(err.value) == (
        f"Fetching blob {digest} of {layout.reference}: corrupted blob, expecting {digest}"
    )
    assert proxy.fetch_manifest(image)[0] == layout.manifest


def test_leaving_the_block_early_still_checks_the_blob(proxy: ImageProxy, layout: Layout) -> None:
    digest, size = layout.layers[0]
    layout.blob_path(digest).write_bytes(b"\0" * size)
    image = proxy.open_image(layout.reference)
    with (
        pytest.raises(BootcError, match="corrupted blob"),
        proxy.open_blob(image, digest, size) as stream,
    ):
        stream.read(10)


def test_size_mismatch_is_reported(proxy: ImageProxy, layout: Layout) -> None:
    digest, size = layout.layers[0]
    image = proxy.open_image(layout.reference)
    with pytest.raises(BootcError) as err:
        read_blob(proxy, image, digest, size - 1)
    assert str(err.value).endswith(f": expected {size - 1} bytes in blob, got {size}")


def test_exception_abandons_the_blob_and_keeps_the_proxy(proxy: ImageProxy, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "big", [{"noise": random.Random(3).randbytes(4 << 20)}])
    image = proxy.open_image(layout.reference)
    digest, size = layout.layers[0]

    def abandon_then_continue() -> None:
        with pytest.raises(KeyError), proxy.open_blob(image, digest, size) as stream:
            stream.read(1000)
            raise KeyError("consumer failed")
        assert len(read_blob(proxy, image, digest, size)) == size

    within(60, proxy, abandon_then_continue)


def test_closing_the_stream_early_gives_the_blob_up(proxy: ImageProxy, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "big", [{"noise": random.Random(5).randbytes(4 << 20)}])
    image = proxy.open_image(layout.reference)
    digest, size = layout.layers[0]

    def close_early() -> None:
        with proxy.open_blob(image, digest, size) as stream:
            stream.read(1000)
            stream.close()
        assert proxy.fetch_manifest(image)[0] == layout.manifest

    within(60, proxy, close_early)


def test_other_calls_while_streaming_fail_instead_of_hanging(
    proxy: ImageProxy, layout: Layout
) -> None:
    image = proxy.open_image(layout.reference)
    digest, size = layout.layers[0]

    def call_while_streaming() -> None:
        with proxy.open_blob(image, digest, size) as stream:
            stream.read(1)
            with pytest.raises(BootcError) as err:
                proxy.fetch_config(image)
            assert str(err.value) == (
                f"Fetching the config of {layout.reference}: "
                "The image proxy cannot run GetFullConfig while this thread streams"
            )
        assert ImageConfig.parse(proxy.fetch_config(image)).version == "1.0"

    within(30, proxy, call_while_streaming)


def test_open_blob_checks_its_arguments(proxy: ImageProxy, layout: Layout) -> None:
    image = proxy.open_image(layout.reference)
    with pytest.raises(BootcError, match='invalid digest "sha256:xyz"'):
        read_blob(proxy, image, "sha256:xyz", 1)
    with pytest.raises(BootcError, match="invalid size -1"):
        read_blob(proxy, image, layout.layers[0][0], -1)


def test_leaving_the_proxy_reaps_skopeo(layout: Layout) -> None:
    with ImageProxy() as proxy:
        pid = proxy.pid
        assert pid is not None
        proxy.open_image(layout.reference)
    assert proxy.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # no longer our child: it was reaped
    with pytest.raises(BootcError, match="The image proxy is shut down"):
        proxy.open_image(layout.reference)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def test_a_call_cut_short_still_reaps_skopeo() -> None:
    # A registry that takes connections and never answers: OpenImage waits in skopeo.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        proxy = ImageProxy()
        proxy.start()
        pid = proxy.pid
        assert pid is not None
        previous = signal.signal(signal.SIGALRM, _interrupt)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            with pytest.raises(KeyboardInterrupt):
                proxy.open_image(f"docker://127.0.0.1:{silent.getsockname()[1]}/os:1")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        proxy.close()
    assert proxy.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no skopeo is left behind
    with pytest.raises(BootcError, match="interrupted during OpenImage"):
        proxy.open_image("oci:/nowhere:x")


def test_skopeo_dying_while_idle_is_an_error(layout: Layout) -> None:
    with ImageProxy() as proxy:
        image = proxy.open_image(layout.reference)
        assert proxy.pid is not None
        os.kill(proxy.pid, signal.SIGKILL)
        for _ in range(2):
            with pytest.raises(BootcError) as err:
                within(30, proxy, lambda: proxy.fetch_manifest(image))
            assert str(err.value) == (
                f"Fetching the manifest of {layout.reference}: "
                "The image proxy exited unexpectedly: skopeo killed by SIGKILL"
            )
    assert proxy.pid is None


def test_skopeo_dying_mid_stream_is_an_error(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "big", [{"noise": random.Random(4).randbytes(4 << 20)}])
    digest, size = layout.layers[0]
    with ImageProxy() as proxy:
        image = proxy.open_image(layout.reference)

        def kill_while_reading() -> None:
            with proxy.open_blob(image, digest, size) as stream:
                stream.read(1000)
                assert proxy.pid is not None
                os.kill(proxy.pid, signal.SIGKILL)
                stream.read()

        with pytest.raises(BootcError) as err:
            within(30, proxy, kill_while_reading)
    assert str(err.value) == (
        f"Fetching blob {digest} of {layout.reference}: "
        "The image proxy exited unexpectedly: skopeo killed by SIGKILL"
    )


def fake_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a skopeo on PATH that records its argv and fails the way skopeo does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_file = tmp_path / "argv"
    script = bin_dir / "skopeo"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {argv_file}\n'
        'echo \'time="x" level=fatal msg="no such flag"\' >&2\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return argv_file


def test_options_become_skopeo_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv_file = fake_skopeo(tmp_path, monkeypatch)
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "reject"}]}')
    monkeypatch.setenv("CONTAINERS_POLICY_JSON", str(policy))
    proxy = ImageProxy(
        auth=RegistryAuth(Path("/run/ostree/auth.json")),
        insecure_skip_tls_verification=True,
        cert_dir=Path("/etc/certs"),
    )
    with pytest.raises(BootcError) as err, proxy:
        pass
    assert str(err.value) == (
        "Starting the image proxy: The image proxy exited unexpectedly: skopeo: no such flag"
    )
    argv = argv_file.read_text().split("\n")
    assert argv[:9] == [
        "--policy",
        str(policy),
        "experimental-image-proxy",
        "--authfile",
        "/run/ostree/auth.json",
        "--tls-verify=false",
        "--cert-dir",
        "/etc/certs",
        "--sockfd",
    ]
    assert proxy.pid is None


def test_without_an_auth_file_the_proxy_uses_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_file = fake_skopeo(tmp_path, monkeypatch)
    with pytest.raises(BootcError), ImageProxy():
        pass
    argv = argv_file.read_text().split("\n")
    assert argv[argv.index("experimental-image-proxy") + 1] == "--no-creds"


def test_missing_skopeo_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BootcError) as err, ImageProxy():
        pass
    assert str(err.value) == "skopeo not found"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "reading manifest x in h/r: manifest unknown: manifest unknown",
            "reading manifest x in h/r: manifest unknown",
        ),
        ("a\n  b: c", "a b: c"),
        ("", "unknown error"),
    ],
)
def test_skopeo_errors_are_cleaned_up(raw: str, clean: str) -> None:
    assert _clean_error(raw) == clean

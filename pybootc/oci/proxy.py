"""A client for skopeo's image proxy (`skopeo experimental-image-proxy`).

It speaks the containers-image-proxy protocol (0.2.x, as ostree-ext does) over a
SOCK_SEQPACKET socketpair, and streams manifests, configs and blobs out of any image
that skopeo can open, without copying the image to disk first.
"""

# How skopeo 1.9.3 (protocol 0.2.3, cmd/skopeo/proxy.go) behaves, as read in its source
# and seen on this machine; the code below depends on each point:
# - It serves one request at a time: it reads a request, runs it and replies before it
#   reads the next. Every handler holds one mutex.
# - GetManifest, GetFullConfig and GetBlob reply at once with the read end of a new pipe
#   (SCM_RIGHTS) and a pipeid; a goroutine then copies the payload into the pipe.
# - FinishPipe(pipeid) waits for that goroutine to finish and only then closes the write
#   end. So the pipe reaches EOF only after FinishPipe, and FinishPipe returns only once
#   the reader has taken everything the goroutine wrote: the two must run concurrently.
#   While FinishPipe waits, skopeo answers nothing else.
# - GetBlob itself checks the blob: it hashes the bytes as it copies them and counts
#   them. A mismatch is the error of FinishPipe: `corrupted blob, expecting sha256:...`
#   or `expected N bytes in blob, got M`. The size we pass is what it counts against.
# - A reader that closes its end early makes the goroutine fail with EPIPE, and
#   FinishPipe then answers `write |1: broken pipe`.
# - GetManifest resolves a manifest list to this machine's platform, converts a Docker
#   schema 2 manifest to OCI, and answers with the digest of the original manifest.
#   GetFullConfig answers with skopeo's re-encoding of the config, not the blob's bytes.
# - Errors are plain Go error strings, e.g. `no descriptor found for reference "x"`,
#   `open /dir/index.json: no such file or directory`, or for a registry
#   `reading manifest T in H/R: manifest unknown: manifest unknown`.
# - Not in 1.9.3: signature policy checks in OpenImage (skopeo 1.13), OpenImageOptional
#   and GetLayerInfo (1.11), closing images at Shutdown (1.11), and any way to decrypt
#   layers: GetBlob hands out blobs exactly as stored.

from __future__ import annotations

import array
import contextlib
import fcntl
import io
import json
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from pybootc import tools
from pybootc.errors import BootcError, error_context
from pybootc.oci.auth import ANONYMOUS, RegistryAuth
from pybootc.oci.model import is_valid_digest
from pybootc.oci.sigpolicy import policy_options

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

# skopeo reads each request into a buffer this big (maxMsgSize); payloads go through pipes.
_MAX_MESSAGE_SIZE = 32 * 1024
_SUPPORTED_PROTOCOL = "0.2."
# How long skopeo may take to exit once its socket is closed, before it is killed.
_EXIT_TIMEOUT = 30.0
_PIPE_READ_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class OpenedImage:
    """An image the proxy holds open, and the reference it was opened by."""

    image_id: int
    reference: str


@dataclass(frozen=True)
class _Reply:
    value: object
    pipeid: int
    fd: int | None


def _clean_error(text: str) -> str:
    """skopeo's error text on one line, without the registry's echo of itself."""
    # containers/image wraps the registry's own error, which often repeats its code:
    # `manifest unknown: manifest unknown`.
    parts = " ".join(text.split()).split(": ")
    kept = [part for i, part in enumerate(parts) if i == 0 or part != parts[i - 1]]
    return ": ".join(kept) or "unknown error"


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


class ImageProxy:
    """A running `skopeo experimental-image-proxy`; use it as a context manager.

    Entering starts skopeo and checks the protocol version; leaving shuts it down and
    reaps it. All methods raise BootcError, also when skopeo has died.
    """

    def __init__(
        self,
        *,
        auth: RegistryAuth = ANONYMOUS,
        insecure_skip_tls_verification: bool = False,
        cert_dir: Path | None = None,
        staging: Path | None = None,
    ) -> None:
        # skopeo writes what it reads of a containers-storage image to temporary files,
        # in /var/tmp unless told, and 1.9 leaves them there: `staging` is the caller's.
        self._global = ["--tmpdir", os.fspath(staging)] if staging is not None else []
        options = auth.options()
        if insecure_skip_tls_verification:
            options.append("--tls-verify=false")
        if cert_dir is not None:
            options += ["--cert-dir", os.fspath(cert_dir)]
        self._options = options
        self._argv: list[str] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._failure: BootcError | None = None
        self._open_images: set[int] = set()
        self._thread_state = threading.local()
        self.protocol_version = ""

    def __enter__(self) -> ImageProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except BootcError as err:
            # The error already on its way out says more than how skopeo ended.
            log.debug("Ignoring image proxy shutdown failure: %s", err)

    @property
    def pid(self) -> int | None:
        """The process ID of skopeo while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start skopeo and initialize the protocol (once; `close` ends it)."""
        if self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._argv = [
                "skopeo",
                *self._global,
                # Newer proxies apply it at OpenImage; pybootc checks it before, too.
                *policy_options(),
                "experimental-image-proxy",
                *self._options,
                "--sockfd",
                str(theirs.fileno()),
            ]
            self._proc = tools.spawn(self._argv, pass_fds=[theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            # Only skopeo may hold its end: then its exit shows up here as EOF.
            theirs.close()
        self._sock = ours
        self._failure = None
        try:
            with error_context("Starting the image proxy"):
                version = self._call("Initialize").value
                if not isinstance(version, str) or not version.startswith(_SUPPORTED_PROTOCOL):
                    raise BootcError(f"Unsupported image proxy protocol version {version}")
        except BaseException:
            self._stop(check=False)
            raise
        self.protocol_version = version

    def close(self) -> None:
        """Close the open images, shut skopeo down and reap it."""
        if self._proc is None and self._sock is None:
            return
        for image_id in sorted(self._open_images):
            try:
                self._call("CloseImage", image_id)
            except BootcError as err:
                log.debug("Closing image %d: %s", image_id, err)
        self._open_images.clear()
        self._stop(check=True)

    def _stop(self, *, check: bool) -> None:
        with self._lock:
            proc, sock = self._proc, self._sock
            self._proc, self._sock = None, None
            if sock is not None:
                with suppress(OSError):  # skopeo may be gone already
                    sock.send(json.dumps({"method": "Shutdown", "args": []}).encode())
                sock.close()
            if proc is None:
                return
            # A call cut short (Ctrl-C) left skopeo in the middle of it, answering no
            # one: it is killed, not waited for, and how it ended is no news.
            interrupted = self._failure is not None
            if interrupted:
                proc.kill()
            else:
                self._failure = BootcError("The image proxy is shut down")
            _wait_or_kill(proc)
            try:
                tools.reap(proc, self._argv)
            except BootcError as err:
                if check and not interrupted:
                    raise err.with_context("Shutting down the image proxy") from None
                log.debug("Image proxy failed: %s", err)

    def open_image(self, reference: str) -> OpenedImage:
        """Open the image `reference`, in skopeo's syntax (`docker://h/r:t`, `oci:/d:t`)."""
        with error_context(f"Opening image {reference}"):
            image_id = self._call("OpenImage", reference).value
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise BootcError(f"The image proxy answered {image_id!r}, not an image ID")
        self._open_images.add(image_id)
        return OpenedImage(image_id, reference)

    def close_image(self, image: OpenedImage) -> None:
        """Let skopeo release `image`."""
        self._open_images.discard(image.image_id)
        with error_context(f"Closing image {image.reference}"):
            self._call("CloseImage", image.image_id)

    def fetch_manifest(self, image: OpenedImage) -> tuple[bytes, str]:
        """The image's manifest, as OCI, and the digest of the manifest as published.

        A manifest list is resolved to this machine's platform. A Docker manifest comes
        back converted to OCI, so the digest is not always the sha256 of these bytes.
        """
        what = f"Fetching the manifest of {image.reference}"
        with error_context(what):
            reply = self._call("GetManifest", image.image_id)
        with self._pipe(reply, what) as stream:
            manifest = stream.read()
        if not is_valid_digest(reply.value):
            raise BootcError(f"{what}: the image proxy answered {reply.value!r}, not a digest")
        return manifest, str(reply.value)

    def fetch_config(self, image: OpenedImage) -> bytes:
        """The image's full configuration, as OCI JSON.

        skopeo re-encodes its own parsed copy, so these are not the bytes of the config
        blob and do not match its digest; fetch the blob with `open_blob` for those.
        """
        what = f"Fetching the config of {image.reference}"
        with error_context(what):
            reply = self._call("GetFullConfig", image.image_id)
        with self._pipe(reply, what) as stream:
            return stream.read()

    @contextmanager
    def open_blob(self, image: OpenedImage, digest: str, size: int) -> Iterator[BinaryIO]:
        """A stream of the blob `digest`, which must be `size` bytes long.

        skopeo checks digest and size as it sends; a mismatch is raised, as BootcError,
        by the read that reaches the end. Leaving the block normally reads what is left,
        so that this check always runs; leaving it by an exception abandons the blob.
        While the stream is open, this thread may make no other call on the proxy.
        """
        what = f"Fetching blob {digest} of {image.reference}"
        if not is_valid_digest(digest):
            raise BootcError(f'{what}: invalid digest "{digest}"')
        if size < 0:
            raise BootcError(f"{what}: invalid size {size}")
        with error_context(what):
            reply = self._call("GetBlob", image.image_id, digest, size)
        with self._pipe(reply, what) as stream:
            yield stream

    @contextmanager
    def _pipe(self, reply: _Reply, what: str) -> Iterator[BinaryIO]:
        """Read the pipe of `reply` while another thread calls FinishPipe on it."""
        if reply.fd is None or not reply.pipeid:
            if reply.fd is not None:
                os.close(reply.fd)
            raise BootcError(f"{what}: the image proxy sent no data pipe")
        finisher = _PipeFinisher(self, reply.pipeid, what)
        reader = _PipeReader(reply.fd, finisher)
        streams = getattr(self._thread_state, "streams", 0)
        self._thread_state.streams = streams + 1
        try:
            finisher.start()
            try:
                yield io.BufferedReader(reader, _PIPE_READ_BUFFER)
                # A caller that closed the stream before its end gave the blob up.
                abandoned = reader.closed and not reader.at_end
                while not reader.closed and reader.read(_PIPE_READ_BUFFER):
                    pass
            finally:
                # Closing our end early makes skopeo's writer fail, which ends FinishPipe.
                reader.close()
                error = finisher.wait()
            if error is not None and not abandoned and not reader.reported:
                raise error
        finally:
            self._thread_state.streams = streams

    def _call(self, method: str, *args: object) -> _Reply:
        """Send one request and wait for its reply; BootcError if it failed."""
        if getattr(self._thread_state, "streams", 0):
            # FinishPipe holds skopeo until this thread reads its pipe: it would hang.
            raise BootcError(f"The image proxy cannot run {method} while this thread streams")
        with self._lock:
            if self._failure is not None:
                raise self._failure
            sock = self._sock
            if sock is None:
                raise BootcError("The image proxy is not running")
            request = json.dumps({"method": method, "args": list(args)}).encode()
            if len(request) > _MAX_MESSAGE_SIZE:
                raise BootcError(f"The request {method} is too long for the image proxy")
            log.debug("image proxy: %s %s", method, args)
            try:
                sock.send(request)
                message, ancdata, flags, _ = sock.recvmsg(
                    _MAX_MESSAGE_SIZE,
                    socket.CMSG_SPACE(array.array("i").itemsize),
                    socket.MSG_CMSG_CLOEXEC,
                )
            except (ConnectionResetError, BrokenPipeError):
                raise self._proxy_died() from None
            except OSError as err:
                raise self._proxy_died(f"talking to it: {err.strerror}") from None
            except BaseException:
                # A reply may still be coming; it would answer the next request instead.
                self._failure = BootcError(f"The image proxy was interrupted during {method}")
                raise
            fds = _received_fds(ancdata)
            if not message:
                for fd in fds:
                    os.close(fd)
                raise self._proxy_died()
        return _decode_reply(method, message, flags, fds)

    def _proxy_died(self, how: str = "") -> BootcError:
        """Reap skopeo after it went away; called with the lock held."""
        proc, self._proc = self._proc, None
        failure = BootcError("The image proxy exited unexpectedly" + (f" ({how})" if how else ""))
        if proc is not None:
            _wait_or_kill(proc)
            try:
                tools.reap(proc, self._argv)
            except BootcError as err:
                failure = err.with_context(failure.message)
        self._failure = failure
        return failure


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _decode_reply(method: str, message: bytes, flags: int, fds: list[int]) -> _Reply:
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise BootcError(f"The image proxy's reply to {method} was truncated")
        try:
            reply = json.loads(message)
        except (UnicodeDecodeError, json.JSONDecodeError):
            reply = None
        if not isinstance(reply, dict):
            raise BootcError(f"The image proxy's reply to {method} is not a JSON object")
        if reply.get("success") is not True:
            raise BootcError(_clean_error(str(reply.get("error") or f"{method} failed")))
        pipeid = reply.get("pipeid") or 0
        if not isinstance(pipeid, int):
            raise BootcError(f"The image proxy's reply to {method} has a bad pipe ID")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for extra in fds[1:]:
        os.close(extra)
    return _Reply(reply.get("value"), pipeid, fds[0] if fds else None)


class _PipeFinisher:
    """Calls FinishPipe from its own thread, so the caller can read the pipe meanwhile."""

    def __init__(self, proxy: ImageProxy, pipeid: int, what: str) -> None:
        self._proxy = proxy
        self._pipeid = pipeid
        self._what = what
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"image-proxy-pipe-{pipeid}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._proxy._call("FinishPipe", self._pipeid)
        except BootcError as err:
            self._error = err.with_context(self._what)
        except BaseException as err:  # handed to the reading thread, not lost here
            self._error = err

    def wait(self) -> BaseException | None:
        """Wait for FinishPipe, and return what it failed with, if it did."""
        self._thread.join()
        return self._error


_PIPE_SIZE = 1 << 20


class _PipeReader(io.RawIOBase):
    """The read end of a proxy pipe; reaching its end reports FinishPipe's verdict."""

    def __init__(self, fd: int, finisher: _PipeFinisher) -> None:
        super().__init__()
        self._fd = fd
        # A pipe holds 64 KiB: a blob read through it would take a system call, and the
        # GIL again, every 64 KiB. A larger pipe lets each read take up to a megabyte.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._finisher = finisher
        self.at_end = False
        self.reported = False  # whether a read has raised FinishPipe's error already

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        count = os.readv(self._fd, [buffer])
        if count == 0 and not self.at_end:
            # EOF comes only after FinishPipe returned, so its answer is ready now.
            self.at_end = True
            error = self._finisher.wait()
            if error is not None:
                self.reported = True
                raise error
        return count

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

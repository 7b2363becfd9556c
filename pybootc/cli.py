"""The `bootc` command line: argument parsing and dispatch, nothing else (what each verb
does is in verbs.py).

Each verb maps to one library call; a BootcError from it becomes a single
`error: ...` line and exit status 1, as upstream bootc does. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybootc import verbs as verb
from pybootc.errors import BootcError
from pybootc.stores import Backend

if TYPE_CHECKING:
    from typing import TypeAlias

    # Where a verb adds its sub-verbs.
    Verbs: TypeAlias = argparse._SubParsersAction["_VerbParser"]


def _add_apply(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--apply", action="store_true", help=f"reboot into {what}")
    parser.add_argument(
        "--soft-reboot",
        choices=["required", "auto"],
        help="soft-reboot where possible (auto), or fail where not (required)",
    )


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="draw no progress on the terminal")


def _add_progress(parser: argparse.ArgumentParser) -> None:
    _add_quiet(parser)
    parser.add_argument(
        "--progress-fd", type=int, metavar="N", help="write progress as JSON lines to fd N"
    )


def _add_install_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source-imgref", required=True, metavar="IMGREF", help="the image to install"
    )
    parser.add_argument(
        "--target-imgref",
        metavar="IMGREF",
        help="the image the installed system follows (default: --source-imgref)",
    )
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="ostree",
        help="how the image is fetched and kept: layer commits (ostree, the default) or"
        " bootc's containers-storage (container)",
    )
    parser.add_argument(
        "--stateroot",
        help="the stateroot to deploy into (default: the install configuration's, or default)",
    )
    parser.add_argument(
        "--karg", action="append", default=[], metavar="K", help="a kernel argument (repeatable)"
    )
    parser.add_argument(
        "--disable-selinux", action="store_true", help="commit without SELinux labels"
    )
    parser.add_argument(
        "--decryption-key",
        type=Path,
        metavar="K",
        help="private key for an encrypted image (container backend; its path is kept)",
    )
    _add_progress(parser)


def _add_state(verbs: Verbs) -> None:
    state = verbs.add_parser("state", help="modify the state of the system")
    state_verbs = state.add_subparsers(dest="state_verb", required=True)
    wipe = state_verbs.add_parser(
        "wipe-ostree", help="remove all ostree deployments from this system"
    )
    wipe.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    wipe.set_defaults(func=verb.wipe_ostree, changes_host=True)


def _add_container(verbs: Verbs) -> None:
    container = verbs.add_parser("container", help="operations on a container image's root")
    container_verbs = container.add_subparsers(dest="container_verb", required=True)
    checks = container_verbs.add_parser(
        "lint", help="check a root filesystem that is to become a bootc image"
    )
    checks.add_argument(
        "--rootfs", type=Path, default=Path("/"), metavar="PATH", help="the root (default: /)"
    )
    checks.add_argument(
        "--fatal-warnings", action="store_true", help="fail on warnings too, not only on errors"
    )
    checks.add_argument("--list", action="store_true", help="list the lints (YAML) and exit")
    checks.add_argument(
        "--skip", action="append", default=[], metavar="NAME", help="skip a lint (repeatable)"
    )
    checks.add_argument(
        "--no-truncate", action="store_true", help="show every item a lint lists, not five"
    )
    checks.set_defaults(func=verb.container_lint)


def _add_install(verbs: Verbs) -> None:
    install = verbs.add_parser("install", help="install to a target")
    install_verbs = install.add_subparsers(dest="install_verb", required=True)
    to_fs = install_verbs.add_parser("to-filesystem", help="install into a mounted filesystem")
    _add_install_options(to_fs)
    to_fs.add_argument("path", type=Path, metavar="PATH", help="an empty mounted filesystem")
    to_fs.set_defaults(func=verb.install, needs_root=True)
    printed = install_verbs.add_parser(
        "print-configuration",
        help="print the merged install configuration (bootc/install/*.toml) as JSON",
    )
    printed.add_argument(
        "--all", action="store_true", help="also what bootc applies itself (kargs, karg-deletes)"
    )
    printed.set_defaults(func=verb.print_configuration)
    to_disk = install_verbs.add_parser(
        "to-disk", help="install to a disk image: a partition table and an ext4 root"
    )
    _add_install_options(to_disk)
    to_disk.add_argument(
        "--via-loopback", action="store_true", help="DEVICE is a disk image file, used through loop"
    )
    to_disk.add_argument("--wipe", action="store_true", help="overwrite what is on DEVICE")
    to_disk.add_argument(
        "--filesystem",
        choices=["ext4"],
        help="the root filesystem (default: the install configuration's root-fs-type, or ext4)",
    )
    to_disk.add_argument("device", type=Path, metavar="DEVICE", help="the disk (image file)")
    to_disk.set_defaults(func=verb.install_to_disk, needs_root=True)


def _add_internals(verbs: Verbs) -> None:
    internals = verbs.add_parser("internals", help="internal and debugging commands")
    internal_verbs = internals.add_subparsers(dest="internal_verb", required=True)
    flatten = internal_verbs.add_parser(
        "flatten", help="flatten an image's layers into a directory (the overlay view)"
    )
    flatten.add_argument(
        "--source",
        choices=["blobs", "containers-storage"],
        default="blobs",
        help="read layer tar blobs, or containers-storage diff directories",
    )
    flatten.add_argument(
        "--storage", type=Path, help="containers-storage root to pull into (default: a scratch one)"
    )
    flatten.add_argument("image", help="image in any skopeo transport, e.g. oci:DIR:TAG")
    flatten.add_argument("--output", type=Path, required=True, help="directory to create")
    flatten.set_defaults(func=verb.flatten)
    for parent, name in ((internal_verbs, "podman"), (verbs, "internal-podman")):
        podman = _add_passthrough(parent, name, "run podman against bootc's container storage")
        podman.set_defaults(func=verb.podman, changes_host=True)


def _add_passthrough(parent: Verbs, name: str, summary: str) -> argparse.ArgumentParser:
    """A verb whose every following word is podman's, its options too (`--log-level=debug
    images`, `--help`), as upstream's clap takes them: no prefix character of its own."""
    wrapped = parent.add_parser(name, help=summary, prefix_chars="+", add_help=False)
    wrapped.add_argument("args", nargs=argparse.REMAINDER, help="podman's arguments")
    return wrapped


def _add_image(verbs: Verbs) -> None:
    image = verbs.add_parser("image", help="images in bootc's container storage")
    image_verbs = image.add_subparsers(dest="image_verb", required=True)
    listing = image_verbs.add_parser(
        "list", help="list the host's images and those in bootc's storage"
    )
    listing.add_argument(
        "--type",
        choices=["all", "host", "logical"],
        default="all",
        help="which images: those the deployments came from (host), logically bound ones"
        " (logical; pybootc has none) or those and bootc's storage (all, the default)",
    )
    listing.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format"
    )
    copy = image_verbs.add_parser("copy-to-storage", help="copy an image to the host's storage")
    copy.add_argument(
        "--source",
        help="a name in bootc's storage, or an image a deployment came from, as `image list`"
        " shows it (default: the booted image)",
    )
    copy.add_argument("--target", help="name in the host's storage (default: localhost/bootc)")
    pull = image_verbs.add_parser(
        "pull-from-default-storage", help="copy an image from the host's storage to bootc's"
    )
    pull.add_argument("image", help="the image's name in the host's podman storage")
    image_verbs.add_parser("prune", help="remove images no deployment uses")
    cmd = image_verbs.add_parser("cmd", help="podman's image commands against bootc's storage")
    cmd_verbs = cmd.add_subparsers(dest="cmd_verb", required=True)
    for name in ("list", "build", "push"):
        _add_passthrough(cmd_verbs, name, f"`podman image {name}` against bootc's storage")
    cmd_pull = cmd_verbs.add_parser("pull", help="pull images into bootc's storage")
    cmd_pull.add_argument("args", nargs="+", metavar="image", help="image references to pull")
    image.set_defaults(func=verb.image, changes_host=True)


# Each verb's --help ends with an example.
EXAMPLES = {
    (): "bootc status",
    ("status",): "bootc status --format json",
    (
        "switch",
    ): "bootc switch quay.io/example/os:latest\n  bootc switch --transport oci /srv/layout:v2",
    ("upgrade",): "bootc upgrade --check\n  bootc upgrade --apply\n  bootc upgrade --tag v2.0",
    ("update",): "bootc update --check",
    ("rollback",): "bootc rollback --apply",
    ("usr-overlay",): "bootc usr-overlay",
    ("usroverlay",): "bootc usroverlay --read-only",
    ("edit",): "bootc edit -f host.yaml",
    ("install",): "bootc install to-filesystem --source-imgref quay.io/example/os:1 /mnt",
    ("install", "to-filesystem"): (
        "bootc install to-filesystem --source-imgref quay.io/example/os:1 /mnt"
    ),
    ("install", "to-disk"): (
        "bootc install to-disk --via-loopback --source-imgref oci:/srv/layout:v1 disk.img"
    ),
    ("install", "print-configuration"): "bootc install print-configuration --all",
    ("container",): "bootc container lint",
    ("container", "lint"): "bootc container lint --rootfs /srv/os --skip var-log --fatal-warnings",
    ("state",): "bootc state wipe-ostree",
    ("state", "wipe-ostree"): "bootc --sysroot /mnt state wipe-ostree --yes",
    ("image",): "bootc image list",
    ("image", "list"): "bootc image list --format json",
    ("image", "copy-to-storage"): "bootc image copy-to-storage --target localhost/os",
    ("image", "pull-from-default-storage"): "bootc image pull-from-default-storage localhost/os",
    ("image", "prune"): "bootc image prune",
    ("image", "cmd"): "bootc image cmd list --quiet",
    ("image", "cmd", "list"): "bootc image cmd list --quiet",
    ("image", "cmd", "build"): "bootc image cmd build -t localhost/derived /srv/build",
    ("image", "cmd", "push"): "bootc image cmd push localhost/derived oci:/srv/derived",
    ("image", "cmd", "pull"): "bootc image cmd pull quay.io/example/app:1",
    ("internals",): "bootc internals flatten oci:/srv/layout:v1 --output /tmp/tree",
    ("internals", "flatten"): "bootc internals flatten oci:/srv/layout:v1 --output /tmp/tree",
    ("internals", "podman"): "bootc internals podman images",
    ("internal-podman",): "bootc internal-podman images",
    ("completion",): "bootc completion bash > /etc/bash_completion.d/bootc",
}


class _VerbParser(argparse.ArgumentParser):
    """A parser whose --help ends with its verb's example (EXAMPLES). argparse makes
    every sub-parser of the same class, named `bootc VERB SUBVERB`: the words after
    `bootc` find the example."""

    def __init__(self, **kwargs: Any) -> None:
        words = tuple(str(kwargs.get("prog", "bootc")).split()[1:])
        super().__init__(
            epilog="example:\n  " + EXAMPLES[words],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )


def _version() -> str:
    """pybootc's version, as installed (or as the checkout says it is)."""
    from importlib import metadata

    try:
        return metadata.version("pybootc")
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """argparse's "version" action, looking the version up only when asked: the lookup
    imports importlib.metadata and scans the installed distributions, about 40 ms that
    every other command (`status` among them) would pay on each run."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        # argparse's own printer, as its "version" action uses: a closed stdout is
        # no error there.
        parser._print_message(f"bootc {_version()}\n", sys.stdout)
        parser.exit()


# Options of `upgrade` that upstream's parser refuses together (clap's conflicts_with),
# each pair as (earlier, later): --download-only with --from-downloaded is a group.
_UPGRADE_CONFLICTS = (
    ("check", "apply"),
    ("check", "soft_reboot"),
    ("check", "download_only"),
    ("check", "from_downloaded"),
    ("apply", "download_only"),
)


# --mutate-in-place only rewrites an origin: upstream ignores these with it, refused
# here so that no one waits for a reboot or a backend that never comes.
_SWITCH_CONFLICTS = tuple(
    ("mutate_in_place", other)
    for other in ("apply", "soft_reboot", "retain", "backend", "decryption_key")
)


def _refuse_conflicts(args: argparse.Namespace) -> None:
    """Refuse options given together that do not go together, as argparse refuses a
    group's (usage, then the error, exit 2): --check changes nothing, so it takes no
    --apply, --download-only or --from-downloaded, and a download-only update is not
    to be applied by the same command."""
    for earlier, later in getattr(args, "conflicts", ()):
        if getattr(args, earlier) and getattr(args, later):
            flags = [f"--{name.replace('_', '-')}" for name in (later, earlier)]
            args.verb_parser.error(f"argument {flags[0]}: not allowed with argument {flags[1]}")


def _add_switch(verbs: Verbs) -> None:
    switch = verbs.add_parser("switch", help="deploy another image")
    switch.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        help="ostree or container (default: the backend of the current deployment)",
    )
    switch.add_argument(
        "--transport",
        # `docker` is upstream's other name for `registry`.
        choices=[
            "registry",
            "docker",
            "oci",
            "oci-archive",
            "containers-storage",
            "dir",
            "docker-archive",
        ],
        help="how to read IMAGE (default: IMAGE is a full reference, or a registry name)",
    )
    switch.add_argument("--retain", action="store_true", help="keep the old image's ref")
    switch.add_argument(
        "--enforce-container-sigpolicy",
        action="store_true",
        help="require containers-policy.json to verify the image (ostree-image-signed:)",
    )
    switch.add_argument(
        "--decryption-key", type=Path, metavar="K", help="private key for an encrypted image"
    )
    # For installers (Anaconda's %post): hidden from help and completion, as upstream's.
    switch.add_argument("--mutate-in-place", action="store_true", help=argparse.SUPPRESS)
    # Deprecated upstream, where it does nothing and is hidden: scripts still pass it.
    switch.add_argument("--no-signature-verification", action="store_true", help=argparse.SUPPRESS)
    _add_apply(switch, "the new image")
    _add_progress(switch)
    switch.add_argument("image", help="the image, e.g. quay.io/example/os:latest")
    switch.set_defaults(
        func=verb.switch, conflicts=_SWITCH_CONFLICTS, verb_parser=switch, changes_host=True
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _VerbParser(prog="bootc", description="Image-based OS updates (pybootc)")
    parser.add_argument(
        "--sysroot", type=Path, default=Path("/"), help="the system root (default /)"
    )
    parser.add_argument("--debug", action="store_true", help="log the commands run")
    parser.add_argument("--version", action=_VersionAction, help="print the version")
    verbs = parser.add_subparsers(dest="verb", required=True)

    status = verbs.add_parser("status", help="show the host's deployments")
    status.add_argument(
        "--format",
        choices=["humanreadable", "yaml", "json"],
        help="output format (default: humanreadable on a terminal, else yaml)",
    )
    status.add_argument(
        "--format-version",
        type=int,
        default=1,
        help="the document's version (0 and 1 are the same, and all there is)",
    )
    status.add_argument("--json", action="store_true", help="same as --format json")
    status.add_argument("--booted", action="store_true", help="only the booted deployment")
    status.add_argument(
        "-v", "--verbose", action="store_true", help="more per deployment (signature, ...)"
    )
    status.set_defaults(func=verb.status)

    _add_switch(verbs)

    upgrade = verbs.add_parser(
        "upgrade", aliases=["update"], help="deploy the newest version of the image"
    )
    upgrade.add_argument("--check", action="store_true", help="only fetch manifest and config")
    upgrade.add_argument(
        "--format",
        choices=["humanreadable", "json"],
        default="humanreadable",
        help="output format of --check",
    )
    upgrade.add_argument(
        "--tag", metavar="TAG", help="upgrade to another tag of the image the host follows"
    )
    _add_apply(upgrade, "the update")
    held = upgrade.add_mutually_exclusive_group()
    held.add_argument(
        "--download-only",
        action="store_true",
        help="stage the update, but do not apply it at the next reboot",
    )
    held.add_argument(
        "--from-downloaded",
        action="store_true",
        help="apply a --download-only update at the next reboot, fetching nothing",
    )
    _add_progress(upgrade)
    upgrade.set_defaults(
        func=verb.upgrade, conflicts=_UPGRADE_CONFLICTS, verb_parser=upgrade, changes_host=True
    )

    rollback = verbs.add_parser("rollback", help="boot the previous deployment next")
    _add_apply(rollback, "the rollback deployment")
    rollback.set_defaults(func=verb.rollback, changes_host=True)

    overlay = verbs.add_parser(
        "usr-overlay", aliases=["usroverlay"], help="a transient writable overlay on /usr"
    )
    overlay.add_argument("--read-only", action="store_true", help="mount the overlay read-only")
    # Not changes_host: the overlay must be mounted where the host sees it, and
    # `ostree admin unlock` makes /sysroot writable for itself.
    overlay.set_defaults(func=verb.usr_overlay, needs_root=True)

    edit = verbs.add_parser("edit", help="change the host by editing its spec (YAML)")
    edit.add_argument(
        "-f", "--filename", type=Path, help="read the new host document from FILE (- for stdin)"
    )
    # As upstream's edit: --quiet, but no --progress-fd.
    _add_quiet(edit)
    edit.set_defaults(func=verb.edit, progress_fd=None, changes_host=True)

    _add_install(verbs)
    _add_container(verbs)
    _add_state(verbs)
    _add_image(verbs)
    _add_internals(verbs)
    completion = verbs.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh"], help="the shell")
    completion.set_defaults(func=verb.completion)
    return parser


def _byte_transparent_streams() -> None:
    """Arguments, paths and image names are bytes to a Unix tool: what Python decoded
    with surrogateescape goes back out as the same bytes on stdout, and visibly
    escaped on stderr, never as a UnicodeEncodeError; an answer read from stdin that
    is not UTF-8 is just not the answer asked for."""
    for stream, errors in (
        (sys.stdin, "surrogateescape"),
        (sys.stdout, "surrogateescape"),
        (sys.stderr, "backslashreplace"),
    ):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=errors)


def _reader_gone() -> int:
    """stdout's reader went away (`bootc status | head -1`): stop quietly, as a Unix
    tool that SIGPIPE ends does, and keep Python from complaining at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _require_root() -> None:
    """As upstream refuses every command that writes: before it reads anything."""
    if os.geteuid() != 0:
        raise BootcError("This command must be executed as the root user")


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stdout is None:
        # Started with stdout closed (`bootc status >&-`): what it would say goes nowhere.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the whole process)
    if sys.stdin is None:
        # Started with stdin closed (`bootc edit -f - <&-`): it reads as empty.
        sys.stdin = open(os.devnull)  # noqa: SIM115 (for the whole process)
    _byte_transparent_streams()
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        # A shell asking for completions: answer and exit.
        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    _refuse_conflicts(args)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    # Warnings read like bootc's: "warning: ..."
    logging.addLevelName(logging.WARNING, "warning")
    try:
        changes_host = getattr(args, "changes_host", False)
        if changes_host or getattr(args, "needs_root", False):
            _require_root()
        if changes_host:
            from pybootc.ostree.mount_namespace import make_host_writable

            # Before any thread starts (see there).
            make_host_writable(args.sysroot)
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()
    except BootcError as err:
        # What was said before the failure (a staged deployment, say) comes first, also
        # where stdout is a file that buffers it and stderr is the same file.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _reader_gone()
        print(f"error: {err.line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result

"""What each verb of the command line does with its parsed arguments: the one library
call it maps to, and how its result is printed. `cli.py` builds the parser that picks
one of these."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pybootc.errors import BootcError
from pybootc.stores import Backend

if TYPE_CHECKING:
    from rich.table import Table

    from pybootc.commands.report import Report
    from pybootc.oci.imgref import OstreeImageReference
    from pybootc.progress import Progress


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def _print_table(table: Table) -> None:
    """A rich table on stdout: colours only on a terminal, and never wrapped off one
    (a pipe gets whole lines)."""
    from rich.console import Console

    terminal = sys.stdout.isatty()
    # Rendered first and written as any output is: rich's own writes would exit 1 when
    # stdout's reader has gone, where bootc stops quietly (main's BrokenPipeError).
    width = os.get_terminal_size(sys.stdout.fileno()).columns if terminal else 1 << 16
    console = Console(file=io.StringIO(), force_terminal=terminal, width=width)
    with console.capture() as captured:
        console.print(table, highlight=False)
    sys.stdout.write(captured.get())


def _image_argument(text: str, transport: str | None, enforce: bool) -> OstreeImageReference:
    from pybootc.oci.imgref import ImageReference, OstreeImageReference, SignatureSource

    if transport is not None:
        imgref = ImageReference.from_name_and_transport(text, transport)
        sigverify = SignatureSource.container_policy() if enforce else SignatureSource.insecure()
        return OstreeImageReference(sigverify, imgref)
    parsed = OstreeImageReference.parse(text)
    if enforce:
        return OstreeImageReference(SignatureSource.container_policy(), parsed.imgref)
    return parsed


def status(args: argparse.Namespace) -> int:
    from pybootc.host.build import build_host
    from pybootc.host.model import Host, Slot
    from pybootc.host.render import render_human
    from pybootc.ostree.sysroot import Sysroot, is_ostree_sysroot

    if args.format_version not in (0, 1):
        raise BootcError(f"Status: Unsupported format version: {args.format_version}")
    if is_ostree_sysroot(args.sysroot):
        sysroot = Sysroot.open(args.sysroot)
        host, booted = build_host(sysroot), sysroot.booted
    elif args.sysroot.is_dir():
        # A host bootc does not manage: upstream says so, with a null status, and exits 0.
        host, booted = Host.empty(), True
    else:
        raise BootcError(f"{args.sysroot} does not exist")
    if args.booted:
        host = host.filter_to_slot(Slot.BOOTED)
    # As upstream: --format wins, then --json, then what stdout is.
    fmt = args.format or ("json" if args.json else None)
    if fmt is None:
        fmt = "humanreadable" if sys.stdout.isatty() else "yaml"
    if fmt == "json":
        # Upstream's canonical JSON: compact, keys sorted, no newline after it.
        sys.stdout.write(host.to_canonical_json())
    elif fmt == "yaml":
        sys.stdout.write(host.to_yaml())
    else:
        sys.stdout.write(render_human(host, verbose=args.verbose, require_booted=booted))
    return 0


def _booted_checks(args: argparse.Namespace, *flags: str) -> bool:
    """Refuse booted-host-only flags off a booted host, before anything is written;
    whether to soft-reboot afterwards."""
    from pybootc.commands.booted import SoftReboot, check_soft_reboot, require_booted
    from pybootc.ostree.sysroot import is_booted_root

    booted = is_booted_root(args.sysroot)
    for flag in flags:
        if getattr(args, flag.lstrip("-").replace("-", "_"), None):
            require_booted(booted, flag)
    return check_soft_reboot(SoftReboot(args.soft_reboot) if args.soft_reboot else None)


def _finish(args: argparse.Namespace, report: Report, *, soft: bool, staged: bool) -> int:
    """Print what the verb said; with --apply, (soft-)reboot into what it changed."""
    from pybootc.commands import booted
    from pybootc.ostree.sysroot import Sysroot

    _print(report.lines)
    if not report.changed:
        return 0
    if soft:
        required = args.soft_reboot == "required"
        soft = Sysroot.open(args.sysroot).prepare_soft_reboot(staged=staged, required=required)
    if soft:
        kind = "Staged" if staged else "Rollback"
        print(f"{kind} deployment is soft-reboot capable, preparing for soft-reboot...")
    if args.apply:
        if soft:
            booted.soft_reboot()
        booted.reboot()
    return 0


_BOOTED_FLAGS = ("--apply", "--soft-reboot")


def switch(args: argparse.Namespace) -> int:
    from pybootc.commands import update as update_commands

    # --enforce-container-sigpolicy makes the target ostree-image-signed:, which the
    # policy checks before anything is fetched.
    target = _image_argument(args.image, args.transport, args.enforce_container_sigpolicy)
    if args.mutate_in_place:
        _print(update_commands.switch_in_place(args.sysroot, target).lines)
        return 0
    soft = _booted_checks(args, *_BOOTED_FLAGS)
    report = update_commands.switch(
        args.sysroot,
        target,
        backend=Backend(args.backend) if args.backend else None,
        retain=args.retain,
        decryption_key=args.decryption_key,
        progress=_progress(args),
    )
    return _finish(args, report, soft=soft, staged=True)


def upgrade(args: argparse.Namespace) -> int:
    from pybootc.commands import update as update_commands
    from pybootc.commands.check import check_for_update

    soft = _booted_checks(args, *_BOOTED_FLAGS, "--download-only", "--from-downloaded")
    if args.from_downloaded:
        return _finish(args, update_commands.apply_downloaded(args.sysroot), soft=soft, staged=True)
    if args.check:
        report, summary = check_for_update(args.sysroot, args.tag)
        if args.format == "json":
            print(json.dumps(summary, indent=2))
        else:
            _print(report.lines)
        return 0
    report = update_commands.upgrade(
        args.sysroot, download_only=args.download_only, tag=args.tag, progress=_progress(args)
    )
    return _finish(args, report, soft=soft, staged=True)


def rollback(args: argparse.Namespace) -> int:
    from pybootc.commands import update as update_commands

    soft = _booted_checks(args, *_BOOTED_FLAGS)
    return _finish(args, update_commands.rollback(args.sysroot), soft=soft, staged=False)


def usr_overlay(args: argparse.Namespace) -> int:
    from pybootc.commands import booted
    from pybootc.ostree.sysroot import is_booted_root

    booted.require_booted(is_booted_root(args.sysroot), "usroverlay")
    return booted.usr_overlay(read_only=args.read_only)


def edit(args: argparse.Namespace) -> int:
    from pybootc.commands import edit as edit_commands

    _print(edit_commands.edit(args.sysroot, args.filename, progress=_progress(args)).lines)
    return 0


def _install_options(args: argparse.Namespace) -> dict[str, Any]:
    """What both install verbs take, from their shared options."""
    from pybootc.oci.imgref import OstreeImageReference

    target = args.target_imgref
    return {
        "source": OstreeImageReference.parse(args.source_imgref),
        "target_imgref": OstreeImageReference.parse(target) if target else None,
        "backend": Backend(args.backend),
        "stateroot": args.stateroot,
        "kargs": args.karg,
        "disable_selinux": args.disable_selinux,
        "decryption_key": args.decryption_key,
        "progress": _progress(args),
    }


def install(args: argparse.Namespace) -> int:
    from pybootc.commands.install import install_to_filesystem

    _print(install_to_filesystem(args.path, **_install_options(args)).lines)
    return 0


def print_configuration(args: argparse.Namespace) -> int:
    from pybootc.commands import install_config

    # Canonical JSON, as upstream prints it: no newline after it.
    sys.stdout.write(install_config.print_configuration(Path("/"), everything=args.all))
    return 0


def install_to_disk(args: argparse.Namespace) -> int:
    from pybootc.commands import install_disk

    report = install_disk.install_to_disk(
        args.device,
        via_loopback=args.via_loopback,
        wipe=args.wipe,
        filesystem=args.filesystem,
        **_install_options(args),
    )
    _print(report.lines)
    return 0


def podman(args: argparse.Namespace) -> int:
    from pybootc.commands import image as image_commands

    return image_commands.podman(args.sysroot, args.args)


def image(args: argparse.Namespace) -> int:
    from pybootc.commands import image as image_commands

    if args.image_verb == "list":
        images = image_commands.list_images(args.sysroot, image_commands.ImageType(args.type))
        if args.format == "json":
            sys.stdout.write(image_commands.images_json(images))
        else:
            _print_table(image_commands.images_table(images))
        return 0
    if args.image_verb == "cmd":
        return image_commands.image_cmd(args.sysroot, args.cmd_verb, args.args)
    if args.image_verb == "copy-to-storage":
        report = image_commands.copy_to_storage(args.sysroot, args.source, args.target)
    elif args.image_verb == "pull-from-default-storage":
        report = image_commands.pull_from_default_storage(args.sysroot, args.image)
    else:
        report = image_commands.prune(args.sysroot)
    _print(report.lines)
    return 0


def flatten(args: argparse.Namespace) -> int:
    from pybootc.commands.flatten import Source, flatten_image

    summary = flatten_image(
        args.image, args.output, source=Source(args.source), storage_root=args.storage
    )
    print(summary.line())
    return 0


def completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    # The script asks bootc itself (argcomplete) what fits where the cursor is: verbs,
    # options, the values of choices, and file names where a path belongs.
    sys.stdout.write(shellcode(["bootc"], shell=args.shell))
    return 0


def _progress(args: argparse.Namespace) -> Progress:
    from pybootc.progress import NO_PROGRESS, Progress

    terminal = not args.quiet and sys.stderr.isatty()
    if args.progress_fd is None and not terminal:
        return NO_PROGRESS
    return Progress(args.progress_fd, terminal=terminal)


def wipe_ostree(args: argparse.Namespace) -> int:
    from pybootc.commands import state

    _print(state.wipe_ostree(args.sysroot, yes=args.yes).lines)
    return 0


def container_lint(args: argparse.Namespace) -> int:
    from pybootc.commands import lint

    if args.list:
        sys.stdout.write(lint.list_lints())
        return 0
    lint.lint(
        args.rootfs,
        fatal_warnings=args.fatal_warnings,
        skip=args.skip,
        truncate=not args.no_truncate,
    )
    return 0

"""What an SELinux policy costs: the Debian workload at M with the host's reference
policy (workloads.labelled) against the same image without it, in one run. Both
backends' install and one-layer update, and baseline (b) labelling through
`ostree commit --selinux-policy`: the commit modifier ostree-ext labels with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pipelines as p
from measure import Measurement, Sample, rounds
from report import series_json
from workloads import Workload


def labelled_cost(
    env: p.Env,
    plain: tuple[Workload, str],
    labelled: tuple[Workload, str],
    runs: int,
    say: Callable[[str], None],
) -> dict[str, object]:
    """Each workload with the registry repo it was pushed to."""
    (plain_workload, plain_repo), (workload, repo) = plain, labelled
    layers = {str(layer["digest"]) for tag in ("v1", "v2") for layer in workload.layers(tag)}

    # libostree 2022.7's own commit with a policy appends the label after a file's
    # other xattrs, and its fsck, which reads them back sorted, calls such an object
    # corrupt (ostree#3343; the workload's change layer gives files user.* xattrs). So
    # the baselines' repos are checked apart from pybootc's.
    baseline_fsck = p.FsckTally()

    def fresh(run: Callable[[Path], Sample], tally: p.FsckTally = p.FSCK) -> Measurement:
        return lambda: p.in_fresh_filesystem(env, run, tally=tally)

    def of_backend(b: str) -> dict[str, Measurement]:
        return {
            f"{b} install": fresh(lambda m: p.install(env, m, env.image(repo, "v1"), b)),
            f"{b} install, no policy": fresh(
                lambda m: p.install(env, m, env.image(plain_repo, "v1"), b)
            ),
            f"{b} update": fresh(lambda m: p.update(env, m, repo, b, layers)[0]),
        }

    measurements: dict[str, Measurement] = {}
    for backend in p.BACKENDS:
        measurements |= of_backend(backend)
    measurements["(b) install"] = fresh(
        lambda m: p.baseline_b(env, m, workload, "v1", labelled=True), baseline_fsck
    )
    measurements["(a) install"] = fresh(
        lambda m: p.baseline_a(env, m, env.image(repo, "v1"), labelled=True), baseline_fsck
    )
    measurements["(b) install, no policy"] = fresh(
        lambda m: p.baseline_b(env, m, plain_workload, "v1")
    )
    series = rounds(runs, measurements, say)
    times = {name: series_json(s) for name, s in series.items()}
    # ostree#3343 shows as a file object whose checksum is not its name.
    why = (
        ", each a corrupted file object (libostree's commit appends the label after the"
        " other xattrs, ostree#3343)"
        if baseline_fsck.failed
        and all("Corrupted file object" in failure for failure in baseline_fsck.failed)
        else ""
    )
    lines = [
        *_lines(times, runs),
        "",
        f"`ostree fsck` of the baselines' labelled repos: {baseline_fsck.checked} checked, "
        f"{len(baseline_fsck.failed)} failed{why}. pybootc's repos are counted with the "
        "rest, below.",
    ]
    return {
        "workload": workload.name,
        "times": times,
        "baseline_fsck": {"checked": baseline_fsck.checked, "failed": len(baseline_fsck.failed)},
        "lines": lines,
    }


def _lines(times: dict[str, dict[str, object]], runs: int) -> list[str]:
    def t(name: str) -> float:
        return float(str(times[name]["median_s"]))

    b, b_plain = t("(b) install"), t("(b) install, no policy")
    lines = [
        "The Debian workload at M with the host's reference policy in one more layer (every "
        "Fedora and CentOS bootc image carries a policy), against the same image without it; "
        f"medians of {runs}, seconds. The baselines label with `ostree commit "
        "--selinux-policy`, the commit modifier ostree-ext labels through: (b) took "
        f"{b:.2f} s, {b_plain:.2f} s without the policy ({b - b_plain:+.2f} s); (a) took "
        f"{t('(a) install'):.2f} s.",
        "",
        "| backend | install | without the policy | the policy costs | against its baseline "
        "| update | update/install |",
        "|---|---|---|---|---|---|---|",
    ]
    # Each backend against the baseline it is made of, as in the fresh installs above.
    baselines = {"ostree": "(b)", "container": "(a)"}
    for backend in p.BACKENDS:
        install, plain = t(f"{backend} install"), t(f"{backend} install, no policy")
        update, baseline = t(f"{backend} update"), baselines[backend]
        lines.append(
            f"| {backend} | {install:.2f} | {plain:.2f} | {install - plain:+.2f} s | "
            f"{install / t(f'{baseline} install'):.2f}× {baseline} | {update:.2f} | "
            f"{update / install:.0%} |"
        )
    return lines

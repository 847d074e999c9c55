"""Public teachers (and datasets) that fetch themselves.

    python -m benchmarks.fetch teachers                      # every released teacher any table uses
    python -m benchmarks.fetch teachers --table norm.t3      # only those of these tables
    python -m benchmarks.fetch teachers --teachers released  # include CIFAR tables whose paper trained its own
    python -m benchmarks.fetch teachers --list               # the catalogue: files, sources, digests, state
    python -m benchmarks.fetch data cifar100 tiny-imagenet fashion-mnist   # datasets (ImageNet: prints the steps)

Teachers land where the planner reads them (``<data root>/teachers/...``, the paths of the tables'
``teacher_checkpoints`` and of :mod:`models.releases`), through a ``.part`` file that resumes an interrupted
transfer, is checked (SHA-256: torchvision's published prefix, else the digest recorded at the first download)
and architecture-verified before it is renamed into place.  A file already there that fails its check is deleted
and fetched again, and the deletion is said.  ``python -m benchmarks.run`` calls the same step before a launch
(never for ``--dry-run``), so a reachable network is all a table with released teachers needs; offline, each
missing file is one line naming its URL and the manual step, and the cells that need it stay blocked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from benchmarks.errors import KDBenchError, user_errors
from benchmarks.tables import TEACHER_CHOICES, Pair, ReleasedTeacher, Table, list_tables, load_table
from datamodules import DATASETS
from models.checkpoints import CheckpointError
from models.download import hash_prefix_of
from models.releases import RELEASES, Release, check_release, fetch_release, find_release, recorded_digest

__all__ = [
    "main",
    "release_of",
    "released_file_problem",
    "released_teachers",
    "ensure_teachers",
    "plan_releases",
]


def release_of(dataset: str, arch: str, released: ReleasedTeacher) -> Release:
    """The catalogue entry stored at ``released.path``, else an entry made from the table's own path and URL
    (its check: the SHA-256 prefix in a torch.hub-style name, or the recorded digest, then the architecture)."""
    known = find_release(released.path)
    if known is not None:
        return known
    datamodule = DATASETS.get(dataset)
    return Release(
        name=f"{dataset}/{arch}",
        arch=arch,
        num_classes=datamodule.num_classes if datamodule else 1000,
        path=Path(released.path).as_posix(),
        urls=(released.url,) if released.url else (),
        sha256_prefix=hash_prefix_of(released.path),
    )


def released_file_problem(dataset: str, arch: str, released: ReleasedTeacher, root: str | Path) -> str | None:
    """Why the present released teacher file must not be used (one line naming it), or None."""
    release = release_of(dataset, arch, released)
    path = Path(released.path)
    try:
        return check_release(release, root, path if path.is_absolute() else None)
    except CheckpointError as error:
        return str(error)


def released_teachers(
    names: Iterable[str], teachers: str | None = None, pairs: Sequence[str] | None = None
) -> dict[str, Release]:
    """path -> release of every released teacher the tables' plans would read (``teachers`` as ``--teachers``)."""
    wanted_pairs = {Pair.parse(p).label for p in pairs} if pairs else None
    found: dict[str, Release] = {}
    for name in names:
        table = load_table(name)
        mode = table.teacher_mode(teachers)
        for pair in table.pairs:
            if wanted_pairs is not None and pair.label not in wanted_pairs:
                continue
            release = _release_for_table(table, pair.teacher, mode)
            if release is not None:
                found.setdefault(release.path, release)
    return found


def _release_for_table(table: Table, arch: str, mode: str) -> Release | None:
    from models.releases import release_for

    if arch in table.teacher_checkpoints:
        return release_of(table.dataset, arch, table.teacher_checkpoints[arch])
    if table.teachers is not None and mode == "released":
        return release_for(table.dataset, arch)
    return None


def plan_releases(plan) -> list[Release]:  # type: ignore[no-untyped-def]
    """The releases a plan reads (its ``released`` teachers), present or not."""
    return [_release_for_table(plan.table, arch, "released") or release_of(plan.table.dataset, arch,
            ReleasedTeacher(path)) for arch, path in sorted(plan.released.items())]  # fmt: skip


def ensure_teachers(
    releases: Iterable[Release], root: str | Path, *, log: Callable[[str], None] = print, timeout: float = 60.0
) -> tuple[list[Path], list[str]]:
    """Fetch every release whose file is missing or rejected; return (files now in place, one-line failures)."""
    fetched: list[Path] = []
    failures: list[str] = []
    for release in releases:
        target = Path(root) / release.path
        if target.is_file() and check_release(release, root) is None:
            continue
        try:
            path = fetch_release(release, root, timeout=timeout, log=log)
        except CheckpointError as error:
            failures.append(str(error))
            log(f"benchmarks.fetch: {error}")
            continue
        log(f"fetched {release.name} teacher: {path}")
        fetched.append(path)
    return fetched, failures


# ----------------------------------------------------------------------------------------------------- data
def fetch_data(dataset: str, root: str | Path) -> str:
    """Download ``dataset`` into ``root`` (CIFAR-100, Tiny-ImageNet, Fashion-MNIST); ImageNet: the manual steps."""
    from datamodules.errors import DatasetError

    cls = DATASETS.get(dataset)
    if cls is None:
        raise KDBenchError(f"unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASETS))}")
    download = getattr(cls, "download_dataset", None)
    if download is None:
        raise KDBenchError(f"{dataset} has no download")
    try:
        return str(download(str(root)))
    except DatasetError as error:
        raise KDBenchError(str(error)) from None


# ------------------------------------------------------------------------------------------------------ CLI
def _list(root: str) -> None:
    for release in RELEASES.values():
        target = Path(root) / release.path
        if target.is_file():
            problem = check_release(release, root)
            state = "present, verified" if problem is None else f"REJECTED: {problem}"
        else:
            state = "missing"
        digest = release.sha256_prefix or recorded_digest(root, release.path) or "recorded at first download"
        extra = f" ({release.weights_enum})" if release.weights_enum else ""
        print(f"{release.name}{extra}: {target} [{state}]; sha256 {digest}; from {' | '.join(release.sources)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fetch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    teachers = sub.add_parser("teachers", help="the released teacher weights the tables use")
    teachers.add_argument("--table", nargs="*", help="only these tables (default: every table)")
    teachers.add_argument("--pairs", nargs="*", help="only these pairs (teacher->student)")
    teachers.add_argument("--teachers", choices=TEACHER_CHOICES, help="as benchmarks.run's --teachers")
    teachers.add_argument("--data-root", default="data", help="data root the planner reads (default: data)")
    teachers.add_argument("--timeout", type=float, default=60.0, help="seconds per network request")
    teachers.add_argument("--list", action="store_true", help="list the catalogue and the state of each file")
    data = sub.add_parser("data", help="datasets (CIFAR-100, Tiny-ImageNet, Fashion-MNIST; ImageNet: the steps)")
    data.add_argument("datasets", nargs="+", help="cifar100, tiny-imagenet, fashion-mnist, imagenet")
    data.add_argument("--data-root", default="data", help="where the datasets go (default: data)")
    with user_errors("benchmarks.fetch"):
        args = parser.parse_args(argv)
        if args.what == "data":
            for dataset in args.datasets:
                print(fetch_data(dataset, args.data_root))
            return 0
        if args.list:
            _list(args.data_root)
            return 0
        names = list_tables() if not args.table or args.table == ["all"] else args.table
        releases = released_teachers(names, args.teachers, args.pairs)
        if not releases:
            print("no released teachers needed")
            return 0
        _, failures = ensure_teachers(releases.values(), args.data_root, timeout=args.timeout)
        present = len(releases) - len(failures)
        print(f"{present} of {len(releases)} released teacher file(s) in place under {args.data_root}")
        return 2 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fetching the public teacher checkpoints (spec architectures-and-recipes.md §F), with checksums.

``python -m models.download [--root DIR] [NAME ...]`` (``--list`` shows the names).  Known files:

* ``cifar_teachers``: mdistiller's GitHub release ``cifar_teachers.tar`` (also what ND points to), unpacked under
  ``<root>/cifar_teachers/``; it holds RepDistiller's ``<arch>_vanilla/ckpt_epoch_240.pth`` for the six CIFAR-100
  teachers (resnet56, resnet110, resnet32x4, ResNet50, wrn_40_2, vgg13).  Each teacher also has the original
  RepDistiller/CRD URL on ``shape2prog.csail.mit.edu`` as a fallback; that server has been down since 2022
  (RepDistiller issue #47), so it is tried last.
* ``resnet18`` ... ``resnet152``: torchvision's ImageNet "V1" weights (the files mdistiller, NORM and ND hard-code).

Checksums: torchvision's file names carry the first 8 hex digits of the file's SHA-256 (``resnet18-5c106cde.pth``),
which is checked.  mdistiller and RepDistiller publish no checksum, so their files are checked *trust on first use*:
the SHA-256 seen at the first download is recorded in ``<root>/checksums.json`` and every later use must match it
(``--sha256`` pins a known digest instead).  A downloaded file that fails its check is deleted, never used.

Without network access every fetch fails with one line naming the file, the URLs tried and where to put the file
by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.checkpoints import CheckpointError, file_digest

__all__ = [
    "CIFAR_TEACHERS",
    "ChecksumError",
    "DownloadError",
    "KNOWN_FILES",
    "KnownFile",
    "cifar_teacher_path",
    "fetch",
    "verify_file",
]

DEFAULT_ROOT = Path("data/checkpoints")  # data/ is git-ignored
CIFAR_TEACHERS = ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")
_MDISTILLER_RELEASE = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
_SHAPE2PROG = "http://shape2prog.csail.mit.edu/repo/{arch}_vanilla/ckpt_epoch_240.pth"
_TORCHVISION = "https://download.pytorch.org/models/{file}"
_TORCHVISION_FILES = {
    "resnet18": "resnet18-5c106cde.pth",
    "resnet34": "resnet34-333f7ec4.pth",
    "resnet50": "resnet50-19c8e357.pth",
    "resnet101": "resnet101-5d3b4d8f.pth",
    "resnet152": "resnet152-b121ed2d.pth",
}


class DownloadError(CheckpointError):
    """A file could not be fetched (no network, dead server); the message says where to put it by hand."""


class ChecksumError(CheckpointError):
    """A file's SHA-256 differs from the published or recorded one."""


@dataclass(frozen=True)
class KnownFile:
    name: str
    urls: tuple[str, ...]  # tried in order
    filename: str  # where the download lands, relative to the root
    sha256_prefix: str | None = None  # published digest (prefix), e.g. from torchvision's file names
    unpack: bool = False  # a tar archive, extracted next to itself

    def path(self, root: Path) -> Path:
        return root / self.filename


KNOWN_FILES: dict[str, KnownFile] = {
    "cifar_teachers": KnownFile("cifar_teachers", (_MDISTILLER_RELEASE,), "cifar_teachers.tar", unpack=True),
    **{
        f"{arch}_shape2prog": KnownFile(
            f"{arch}_shape2prog",
            (_SHAPE2PROG.format(arch=arch),),
            f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth",
        )
        for arch in CIFAR_TEACHERS
    },
    **{
        arch: KnownFile(arch, (_TORCHVISION.format(file=file),), f"torchvision/{file}", file.split("-")[1][:8])
        for arch, file in _TORCHVISION_FILES.items()
    },
}


def _recorded_digests(root: Path) -> dict[str, str]:
    record = root / "checksums.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def _record_digest(root: Path, filename: str, digest: str) -> None:
    digests = _recorded_digests(root)
    digests[filename] = digest
    (root / "checksums.json").write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")


def verify_file(path: Path, sha256: str | None = None, sha256_prefix: str | None = None) -> str:
    """Return the file's SHA-256, raising :class:`ChecksumError` when it does not start with the expected digest."""
    digest = file_digest(path, length=64)
    for expected in (sha256, sha256_prefix):
        if expected is not None and not digest.startswith(expected.lower()):
            raise ChecksumError(f"{path}: SHA-256 {digest} does not match the expected {expected}")
    return digest


def _check(known: KnownFile, root: Path, path: Path, sha256: str | None) -> None:
    """Published digest if any, else the pinned one, else the one recorded at the first download (TOFU)."""
    recorded = _recorded_digests(root).get(known.filename)
    digest = verify_file(path, sha256 or recorded, known.sha256_prefix)
    if recorded is None and known.sha256_prefix is None:
        _record_digest(root, known.filename, digest)


def _download(url: str, destination: Path, timeout: float) -> None:
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as handle:
        shutil.copyfileobj(response, handle, length=1 << 20)
    partial.replace(destination)


def _unpack(archive: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(archive.parent, filter="data")  # "data": no absolute paths, links out or devices


def fetch(name: str, root: str | Path = DEFAULT_ROOT, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Make sure the known file ``name`` is under ``root`` and passes its checksum; return its path.

    An already present file is verified, not downloaded again.  Archives are unpacked after verification.
    """
    if name not in KNOWN_FILES:
        raise DownloadError(f"unknown download {name!r}; valid: {', '.join(KNOWN_FILES)}")
    known = KNOWN_FILES[name]
    root = Path(root)
    path = known.path(root)
    if not path.is_file():
        failures = []
        for url in known.urls:
            try:
                _download(url, path, timeout)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                failures.append(f"{url} ({getattr(error, 'reason', error)})")
        else:
            raise DownloadError(
                f"cannot download {name}: {'; '.join(failures)} — without network access, put the file at {path}"
            )
    try:
        _check(known, root, path, sha256)
    except ChecksumError:
        path.unlink()
        raise
    if known.unpack:
        _unpack(path)
    return path


def cifar_teacher_path(arch: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """``<root>/cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth``: mdistiller's release, else the shape2prog file."""
    if arch not in CIFAR_TEACHERS:
        raise DownloadError(f"no public CIFAR-100 teacher for {arch!r}; released: {', '.join(CIFAR_TEACHERS)}")
    root = Path(root)
    target = root / "cifar_teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    if target.is_file():
        return target
    errors = []
    try:
        fetch("cifar_teachers", root)
        # mdistiller's archive unpacks to cifar_teachers/<arch>_vanilla/...; accept one extra directory level.
        found = sorted(root.glob(f"**/{arch}_vanilla/ckpt_epoch_240.pth"))
        if found:
            return found[0]
        errors.append(f"cifar_teachers.tar holds no {arch}_vanilla/ckpt_epoch_240.pth")
    except DownloadError as error:
        errors.append(str(error))
    try:
        return fetch(f"{arch}_shape2prog", root)
    except DownloadError as error:
        errors.append(str(error))
    raise DownloadError(" | ".join(errors))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.download", description="Fetch public teacher weights.")
    parser.add_argument("names", nargs="*", help=f"any of: {', '.join(KNOWN_FILES)} (default: cifar_teachers)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="download folder (default: %(default)s)")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of the (single) file named")
    parser.add_argument("--list", action="store_true", help="list the known files and their URLs")
    args = parser.parse_args(argv)
    if args.list:
        for known in KNOWN_FILES.values():
            print(f"{known.name}: {' | '.join(known.urls)} -> {known.filename}")
        return 0
    try:
        for name in args.names or ["cifar_teachers"]:
            print(fetch(name, args.root, args.sha256))
    except CheckpointError as error:
        print(f"models.download: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

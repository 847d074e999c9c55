"""The public teacher checkpoints the papers distil from, where they come from and how each is checked.

Every release is a file under the data root (``--data-root``, ``data/`` by default), at the path the tables name:

* **CIFAR-100** (spec architectures-and-recipes.md §F.1): RepDistiller's six ``<arch>_vanilla/ckpt_epoch_240.pth``
  teachers, ``{'epoch', 'model': state_dict, 'accuracy', 'optimizer'}``, at
  ``teachers/cifar100/<arch>_vanilla/ckpt_epoch_240.pth``.  They are taken from mdistiller's GitHub release
  ``cifar_teachers.tar`` (what ND points to as well; it unpacks to ``cifar_teachers/<arch>_vanilla/...``), or from
  RepDistiller's original server ``shape2prog.csail.mit.edu`` (down since 2022, RepDistiller issue #47), tried
  second.  The file is kept byte for byte as released, so its SHA-256 (a run's teacher identity) is the same for
  every user; key mapping onto kdbench's networks happens on load (:func:`models.checkpoints.map_reference_keys`,
  e.g. ND's ``bn`` -> ``bn1``).  Neither source publishes a checksum: the digest seen at the first download is
  recorded in ``teachers/checksums.json`` beside the files (trust on first use) and every later use must match it.
* **ImageNet** (§F.2): torchvision's ResNet-18/34/50/101/152 and MobileNetV2 ``IMAGENET1K_V1`` weights, named by
  torchvision's weight enums (``ResNet50_Weights.IMAGENET1K_V1``, whose metadata holds its top-1, parameter count
  and licence).  The file is the one mdistiller, NORM and ND hard-code (``resnet50-19c8e357.pth``, from
  ``download.pytorch.org/models``); torchvision >= 0.13's enum URL names a re-saved file of the same V1 weights
  (``resnet50-0676ba61.pth``), which would be a different file and so a different teacher identity.  Both carry
  the first hex digits of their SHA-256 in the name, and the check is torch.hub's (``check_hash``): the file's
  digest must start with them.

* **ImageNet, timm networks** (ND's README rows): DeiT's released RegNetY-16GF teacher ``regnety_160-a5fe301d.pth``
  (``{'model': state_dict}`` from ``dl.fbaipublicfiles.com/deit``, the file ND's DeiT++ script loads; SHA-256 prefix in
  its name) and timm's AugReg ViT-S/16 and ViT-B/16 (ImageNet-21k -> 1k; what ND's ``ImageNet/ViT`` script loads with
  timm 0.6.12's ``pretrained=True``), from timm's Hugging Face repositories as ``pytorch_model.bin`` (no published
  checksum: recorded at the first download).

:func:`check_release` verifies a present file — digest (published prefix or recorded) and architecture (the
state dict, after key mapping, must match the network key for key and shape for shape) — and is what the planner
and the launcher call; :func:`fetch_release` brings a missing or rejected file into place.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.checkpoints import CheckpointError, fitted_state
from models.download import ChecksumError, DownloadError, download, extract_member, hash_prefix_of, sha256_of
from models.profile import meta_model

__all__ = [
    "CIFAR_TEACHERS",
    "RELEASES",
    "Release",
    "ReleaseProblem",
    "check_release",
    "fetch_release",
    "find_release",
    "record_digest",
    "recorded_digest",
    "release_for",
]

CIFAR_TEACHERS = ("resnet56", "resnet110", "resnet32x4", "ResNet50", "wrn_40_2", "vgg13")
CIFAR_ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
_SHAPE2PROG = "http://shape2prog.csail.mit.edu/repo/{arch}_vanilla/ckpt_epoch_240.pth"
_TORCHVISION = "https://download.pytorch.org/models/{file}"
#: Published top-1 of the CIFAR-100 teachers (CRD's Table 1, spec §F.1).
_CIFAR_ACCURACY = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
                   "ResNet50": 79.34}  # fmt: skip
#: kdbench network -> (torchvision weight enum, the legacy file the papers hard-code).
_TORCHVISION_WEIGHTS = {
    "resnet18": ("ResNet18_Weights.IMAGENET1K_V1", "resnet18-5c106cde.pth"),
    "resnet34": ("ResNet34_Weights.IMAGENET1K_V1", "resnet34-333f7ec4.pth"),
    "resnet50": ("ResNet50_Weights.IMAGENET1K_V1", "resnet50-19c8e357.pth"),
    "resnet101": ("ResNet101_Weights.IMAGENET1K_V1", "resnet101-5d3b4d8f.pth"),
    "resnet152": ("ResNet152_Weights.IMAGENET1K_V1", "resnet152-b121ed2d.pth"),
    "mobilenetv2": ("MobileNet_V2_Weights.IMAGENET1K_V1", "mobilenet_v2-b0353104.pth"),
}
#: kdbench network -> (file under teachers/imagenet/, URL, SHA-256 prefix or None) of the timm networks' teachers.
_HUGGINGFACE = "https://huggingface.co/timm/{tag}/resolve/main/pytorch_model.bin"
_TIMM_WEIGHTS = {
    "regnety_16gf": ("regnety_160-a5fe301d.pth", "https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth", "a5fe301d"),
    "vit_s": ("vit_small_patch16_224.augreg_in21k_ft_in1k.bin",
              _HUGGINGFACE.format(tag="vit_small_patch16_224.augreg_in21k_ft_in1k"), None),
    "vit_b": ("vit_base_patch16_224.augreg_in21k_ft_in1k.bin",
              _HUGGINGFACE.format(tag="vit_base_patch16_224.augreg_in21k_ft_in1k"), None),
}  # fmt: skip
#: Published top-1 of those weights (DeiT's Table 5 for its RegNetY-16GF teacher).
_TIMM_ACCURACY = {"regnety_16gf": 82.9}
CHECKSUMS = "teachers/checksums.json"


class ReleaseProblem(CheckpointError):
    """A present release file that must not be used (wrong digest, wrong architecture, unreadable)."""


@dataclass(frozen=True)
class Release:
    """One public teacher file."""

    name: str  # e.g. "cifar100/resnet56", "imagenet/resnet50"
    arch: str  # the kdbench network it loads into
    num_classes: int
    path: str  # relative to the data root
    urls: tuple[str, ...]  # tried in order
    archive_url: str | None = None  # a tar holding the file (tried before ``urls``)
    archive_member: str | None = None  # the member's name suffix inside the archive
    sha256_prefix: str | None = None  # published (torch.hub file names); None: recorded at the first download
    accuracy: float | None = None  # published top-1 of these weights
    weights_enum: str | None = None  # torchvision's enum for these weights

    @property
    def sources(self) -> tuple[str, ...]:
        return ((self.archive_url,) if self.archive_url else ()) + self.urls

    def manual_step(self, root: str | Path) -> str:
        target = Path(root) / self.path
        if self.archive_url:
            return (
                f"without network access, download {self.archive_url}, untar it and copy "
                f"{self.archive_member} to {target}"
            )
        return f"without network access, download {self.urls[0]} to {target}"


def _release(dataset: str, arch: str, file: str, url: str, **fields: Any) -> Release:
    """The release ``<dataset>/<arch>``, stored as ``teachers/<dataset>/<file>`` and downloaded from ``url``."""
    num_classes = 100 if dataset == "cifar100" else 1000
    return Release(f"{dataset}/{arch}", arch, num_classes, f"teachers/{dataset}/{file}", (url,), **fields)


def _build_releases() -> dict[str, Release]:
    releases = []
    for arch in CIFAR_TEACHERS:
        member = f"{arch}_vanilla/ckpt_epoch_240.pth"
        url = _SHAPE2PROG.format(arch=arch)
        accuracy = _CIFAR_ACCURACY[arch]
        releases.append(
            _release(
                "cifar100", arch, member, url, archive_url=CIFAR_ARCHIVE_URL, archive_member=member, accuracy=accuracy
            )
        )
    for arch, (enum_name, file) in _TORCHVISION_WEIGHTS.items():
        url = _TORCHVISION.format(file=file)
        releases.append(
            _release("imagenet", arch, file, url, sha256_prefix=hash_prefix_of(file), weights_enum=enum_name)
        )
    for arch, (file, url, prefix) in _TIMM_WEIGHTS.items():
        releases.append(_release("imagenet", arch, file, url, sha256_prefix=prefix, accuracy=_TIMM_ACCURACY.get(arch)))
    return {release.name: release for release in releases}


RELEASES: dict[str, Release] = _build_releases()


def release_for(dataset: str, arch: str) -> Release | None:
    """The public teacher of ``arch`` on ``dataset`` (``cifar100`` / ``imagenet``), if there is one."""
    return RELEASES.get(f"{dataset}/{arch}")


def find_release(path: str) -> Release | None:
    """The release stored at ``path`` (relative to the data root, as a table's ``teacher_checkpoints`` names it)."""
    normalised = Path(path).as_posix()
    return next((r for r in RELEASES.values() if r.path == normalised), None)


# ------------------------------------------------------------------------------------------ recorded digests
def recorded_digest(root: str | Path, release_path: str) -> str | None:
    try:  # no record yet (FileNotFoundError) or an unreadable one: nothing recorded
        return json.loads((Path(root) / CHECKSUMS).read_text()).get(release_path)
    except (OSError, ValueError):
        return None


def record_digest(root: str | Path, release_path: str, digest: str) -> None:
    record = Path(root) / CHECKSUMS
    record.parent.mkdir(parents=True, exist_ok=True)
    digests = json.loads(record.read_text()) if record.is_file() else {}
    digests[release_path] = digest
    temporary = record.with_name(record.name + ".tmp")
    temporary.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    temporary.replace(record)


# ------------------------------------------------------------------------------------------------- checking
@lru_cache(maxsize=64)
def _checked(path: str, size: int, mtime_ns: int, arch: str, num_classes: int, expected: str | None) -> str | None:
    """Why the file cannot be used (cached per file state), or None: a wrong digest, or weights that do not fit
    ``arch`` (after reference key mapping)."""
    digest = sha256_of(path)
    if expected and not digest.startswith(expected):
        return f"{path}: SHA-256 {digest[:16]}... does not match the expected {expected}"
    try:
        fitted_state(path, arch, meta_model(arch, num_classes))
    except CheckpointError as error:
        return str(error)
    return None


def check_release(release: Release, root: str | Path, path: str | Path | None = None) -> str | None:
    """Why the present file of ``release`` under ``root`` must not be used (one line), or None when it is good.

    Checked: the SHA-256 (the published prefix, else the digest recorded at the first download), then the
    architecture.  The result is cached per (file, size, modification time).
    """
    target = Path(path) if path is not None else Path(root) / release.path
    stat = os.stat(target)
    expected = release.sha256_prefix or recorded_digest(root, release.path)
    return _checked(str(target), stat.st_size, stat.st_mtime_ns, release.arch, release.num_classes, expected)


# ------------------------------------------------------------------------------------------------- fetching
def fetch_release(release: Release, root: str | Path, *, timeout: float = 60.0, log=print) -> Path:  # type: ignore[no-untyped-def]
    """Make sure ``release``'s file is under ``root``, verified; download it when missing or rejected.

    A present file that fails :func:`check_release` is deleted (and the deletion is said).  Raises
    :class:`DownloadError` with every source tried and the manual step when nothing could be fetched.
    """
    root = Path(root)
    target = root / release.path
    if target.is_file():
        problem = check_release(release, root)
        if problem is None:
            return target
        target.unlink()
        log(f"deleted {target}: {problem}")
    failures: list[str] = []
    if release.archive_url:
        try:
            _fetch_from_archive(release, root, timeout)
            return target
        except (DownloadError, ChecksumError, ReleaseProblem) as error:
            failures.append(str(error).split("; without network access")[0])
    for url in release.urls:
        try:
            digest = download(url, target, sha256_prefix=release.sha256_prefix, timeout=timeout,
                              manual=release.manual_step(root))  # fmt: skip
        except DownloadError as error:  # a ChecksumError (not a DownloadError) propagates
            failures.append(str(error).split("; without network access")[0])
            continue
        _accept(release, root, target, digest)
        return target
    raise DownloadError(f"cannot fetch the {release.name} teacher: {' | '.join(failures)}; {release.manual_step(root)}")


def _accept(release: Release, root: Path, target: Path, digest: str, key: str | None = None) -> None:
    """Architecture-check a freshly downloaded file, then record its digest (trust on first use) or delete it."""
    recorded = recorded_digest(root, key or release.path)
    if recorded and recorded != digest:
        target.unlink()
        raise ChecksumError(
            f"{target}: SHA-256 {digest} differs from the one recorded at the first download ({recorded}); "
            "the file was deleted"
        )
    try:
        fitted_state(target, release.arch, meta_model(release.arch, release.num_classes))
    except CheckpointError as error:
        target.unlink()
        raise ReleaseProblem(f"{error}; the file was deleted") from None
    if release.sha256_prefix is None:
        record_digest(root, key or release.path, digest)


def _fetch_from_archive(release: Release, root: Path, timeout: float) -> None:
    """Download the archive (kept under ``teachers/archives/`` so other teachers reuse it) and take the member out.

    The archive's digest is recorded at its first download; an archive that no longer matches it, or that cannot
    be read, is deleted (and fetched again by the next attempt).
    """
    assert release.archive_url and release.archive_member
    archive = root / "teachers" / "archives" / Path(release.archive_url).name
    key = f"teachers/archives/{archive.name}"
    if archive.is_file():
        recorded = recorded_digest(root, key)
        if recorded and sha256_of(archive) != recorded:
            archive.unlink()
            raise ChecksumError(f"{archive}: SHA-256 differs from the one recorded at its first download; deleted")
    if not archive.is_file():
        record_digest(
            root, key, download(release.archive_url, archive, timeout=timeout, manual=release.manual_step(root))
        )
    target = root / release.path
    with tempfile.TemporaryDirectory(dir=archive.parent) as scratch:
        staged = Path(scratch) / "member.pth"
        try:
            extract_member(archive, release.archive_member, staged)
        except (OSError, tarfile.TarError) as error:
            archive.unlink()
            raise DownloadError(f"cannot read {archive} ({error}); the archive was deleted") from None
        _accept(release, root, staged, sha256_of(staged), key=release.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(target)

"""The download helper, exercised on local files (``file://`` URLs) and an unreachable address — never the internet."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from models import download
from models.download import ChecksumError, DownloadError, KnownFile, fetch, verify_file


def test_torchvision_entries_carry_the_sha256_prefix_of_their_file_name() -> None:
    known = download.KNOWN_FILES["resnet18"]
    assert known.urls == ("https://download.pytorch.org/models/resnet18-5c106cde.pth",)
    assert known.sha256_prefix == "5c106cde"
    assert download.KNOWN_FILES["resnet152"].sha256_prefix == "b121ed2d"
    assert (
        download.KNOWN_FILES["cifar_teachers"]
        .urls[0]
        .endswith("mdistiller/releases/download/checkpoints/cifar_teachers.tar")
    )
    assert download.KNOWN_FILES["wrn_40_2_shape2prog"].urls == (
        "http://shape2prog.csail.mit.edu/repo/wrn_40_2_vanilla/ckpt_epoch_240.pth",
    )


def test_verify_file_checks_full_digests_and_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"kdbench")
    digest = hashlib.sha256(b"kdbench").hexdigest()
    assert verify_file(path) == digest
    assert verify_file(path, sha256=digest.upper(), sha256_prefix=digest[:8]) == digest
    with pytest.raises(ChecksumError, match=f"SHA-256 {digest} does not match the expected 00000000"):
        verify_file(path, sha256_prefix="00000000")


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Register a known file served from a local path; returns (source path, download root, name)."""
    source = tmp_path / "server" / "teacher.pth"
    source.parent.mkdir()
    source.write_bytes(b"first release")
    root = tmp_path / "root"
    known = KnownFile("teacher", (source.as_uri(),), "teachers/teacher.pth")
    monkeypatch.setitem(download.KNOWN_FILES, "teacher", known)
    return source, root, "teacher"


def test_first_download_records_the_digest_and_later_changes_are_refused(served) -> None:  # type: ignore[no-untyped-def]
    source, root, name = served
    path = fetch(name, root)
    assert path.read_bytes() == b"first release"
    recorded = (root / "checksums.json").read_text()
    assert hashlib.sha256(b"first release").hexdigest() in recorded
    assert fetch(name, root) == path  # present and verified: not downloaded again
    # The server now hands out other bytes: the fresh download fails the recorded digest and is deleted.
    path.unlink()
    source.write_bytes(b"tampered")
    with pytest.raises(ChecksumError):
        fetch(name, root)
    assert not path.exists()


def test_a_pinned_digest_is_enforced(served) -> None:  # type: ignore[no-untyped-def]
    _, root, name = served
    with pytest.raises(ChecksumError):
        fetch(name, root, sha256="ab" * 32)
    assert fetch(name, root, sha256=hashlib.sha256(b"first release").hexdigest()).is_file()


def test_offline_fails_with_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on the loopback interface: nothing listens, the connection is refused at once.
    monkeypatch.setitem(
        download.KNOWN_FILES,
        "dead",
        KnownFile("dead", ("http://127.0.0.1:9/a.pth", "http://127.0.0.1:9/b.pth"), "a.pth"),
    )
    with pytest.raises(DownloadError) as error:
        fetch("dead", tmp_path, timeout=5)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot download dead" in message and "127.0.0.1:9/b.pth" in message and str(tmp_path / "a.pth") in message
    assert download.main(["dead", "--root", str(tmp_path)]) == 2


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DownloadError, match="valid: cifar_teachers, "):
        fetch("resnet9000")


def test_cifar_teacher_from_the_mdistiller_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "server" / "cifar_teachers.tar"
    archive.parent.mkdir()
    payload = b"resnet56 weights"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    known = download.KNOWN_FILES["cifar_teachers"]
    monkeypatch.setitem(
        download.KNOWN_FILES, "cifar_teachers", KnownFile(known.name, (archive.as_uri(),), known.filename, unpack=True)
    )
    root = tmp_path / "root"
    path = download.cifar_teacher_path("resnet56", root)
    assert path == root / "cifar_teachers" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    assert path.read_bytes() == payload
    with pytest.raises(DownloadError, match="no public CIFAR-100 teacher for 'resnet20'"):
        download.cifar_teacher_path("resnet20", root)

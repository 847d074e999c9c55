"""The downloader against a local HTTP server on 127.0.0.1: checks, resume, restart, mismatch, offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from models.download import ChecksumError, DownloadError, download, hash_prefix_of, verify_file

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, position-dependent: a misplaced byte changes the digest
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def test_hash_prefix_follows_torch_hub_names() -> None:
    assert hash_prefix_of("resnet50-19c8e357.pth") == "19c8e357"
    assert hash_prefix_of("teachers/imagenet/resnet18-5c106cde.pth") == "5c106cde"
    assert hash_prefix_of("ckpt_epoch_240.pth") is None


def test_verify_file_checks_full_digests_and_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"kdbench")
    digest = hashlib.sha256(b"kdbench").hexdigest()
    assert verify_file(path) == digest
    assert verify_file(path, sha256=digest.upper(), sha256_prefix=digest[:8]) == digest
    with pytest.raises(ChecksumError, match=f"SHA-256 {digest} does not match the expected 00000000"):
        verify_file(path, sha256_prefix="00000000")


def test_download_checks_the_prefix_and_renames_into_place(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    name = f"/models/net-{DIGEST[:8]}.pth"
    http_server.files[name] = PAYLOAD
    target = tmp_path / "teachers" / Path(name).name
    assert download(http_server.url(name), target, sha256_prefix=hash_prefix_of(name)) == DIGEST
    assert target.read_bytes() == PAYLOAD
    assert not target.with_name(target.name + ".part").exists()


def test_a_cut_download_resumes_with_a_range_request(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/f.pth"] = PAYLOAD
    http_server.cut["/f.pth"] = 300_000
    target = tmp_path / "f.pth"
    # One attempt: the transfer is cut, the part stays, the error says how to resume.
    with pytest.raises(DownloadError, match="interrupted .* with 300000 bytes .* run the same command again"):
        download(http_server.url("/f.pth"), target, sha256=DIGEST, attempts=1)
    assert not target.exists() and target.with_name("f.pth.part").stat().st_size == 300_000
    # The next call asks for the rest only and ends with the exact file.
    assert download(http_server.url("/f.pth"), target, sha256=DIGEST) == DIGEST
    assert http_server.requests[-1] == ("/f.pth", "bytes=300000-")
    assert target.read_bytes() == PAYLOAD


def test_one_call_retries_and_resumes_by_itself(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/f.pth"] = PAYLOAD
    http_server.cut["/f.pth"] = 123_457
    target = tmp_path / "f.pth"
    download(http_server.url("/f.pth"), target, sha256=DIGEST, attempts=3)
    assert [r for _, r in http_server.requests] == [None, "bytes=123457-"]
    assert target.read_bytes() == PAYLOAD


def test_a_server_without_range_support_restarts_the_file_cleanly(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/f.pth"] = PAYLOAD
    http_server.ignore_range = True
    target = tmp_path / "f.pth"
    target.with_name("f.pth.part").write_bytes(b"stale bytes of an older attempt")
    download(http_server.url("/f.pth"), target, sha256=DIGEST)
    assert http_server.requests == [("/f.pth", "bytes=31-")]  # asked to resume, got the whole file (200)
    assert target.read_bytes() == PAYLOAD


def test_a_complete_part_is_checked_and_kept(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/f.pth"] = PAYLOAD
    target = tmp_path / "f.pth"
    target.with_name("f.pth.part").write_bytes(PAYLOAD)  # cut exactly at the end: the server answers 416
    assert download(http_server.url("/f.pth"), target, sha256=DIGEST) == DIGEST
    assert target.read_bytes() == PAYLOAD


def test_a_checksum_mismatch_deletes_the_download_and_says_so(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/resnet18-00000000.pth"] = PAYLOAD
    target = tmp_path / "resnet18-00000000.pth"
    with pytest.raises(ChecksumError) as error:
        download(http_server.url("/resnet18-00000000.pth"), target, sha256_prefix="00000000")
    message = str(error.value)
    assert "\n" not in message and "does not match the expected 00000000" in message and "deleted" in message
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_offline_is_one_line_naming_the_url_and_the_manual_step(tmp_path: Path) -> None:
    # Port 9 on the loopback interface: nothing listens, the connection is refused at once.
    with pytest.raises(DownloadError) as error:
        download("http://127.0.0.1:9/w.pth", tmp_path / "w.pth", timeout=5, manual="copy w.pth to x by hand")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot download http://127.0.0.1:9/w.pth (") and message.endswith(
        "copy w.pth to x by hand"
    )
    assert not (tmp_path / "w.pth").exists()


def test_a_missing_file_on_the_server_is_one_line(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DownloadError, match=r"cannot download .*/nope.pth: HTTP 404"):
        download(http_server.url("/nope.pth"), tmp_path / "nope.pth")

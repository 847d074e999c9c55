"""Downloading one file safely: resumable, checked, never half-written.

:func:`download` fetches ``url`` into ``destination`` through ``<destination>.part``:

* an interrupted transfer leaves the ``.part`` file; the next attempt (up to ``attempts`` in one call, or a later
  call) asks the server for the rest with an HTTP ``Range: bytes=<size>-`` request and appends the ``206 Partial
  Content`` answer.  A server that ignores the range (``200``) restarts the file from byte 0; one that answers
  ``416`` (nothing left) leaves the part as it is, to be checked;
* the finished part is checked against the expected SHA-256 (a full digest, or the prefix that torchvision and
  ``torch.hub`` put in their file names, ``resnet18-5c106cde.pth``) *before* it is renamed into place, so the
  destination is either absent or complete and verified.  A part that fails the check is deleted and the error
  says so;
* without network access every failure is one line naming the URL, the reason and the manual step (where to put
  the file by hand).

:func:`extract_member` takes one file out of a tar archive into place the same way (temporary file, rename).
Only the standard library's ``urllib`` is used, so ``file://`` and ``http://127.0.0.1`` URLs work in tests.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from models.checkpoints import CheckpointError, file_digest

__all__ = [
    "ChecksumError",
    "DownloadError",
    "HASH_IN_NAME",
    "download",
    "extract_member",
    "hash_prefix_of",
    "sha256_of",
    "verify_file",
]

#: torch.hub's convention: ``<name>-<first hex digits of the SHA-256>.<ext>`` (torch.hub.HASH_REGEX).
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
_CHUNK = 1 << 20


class DownloadError(CheckpointError):
    """A file could not be fetched (no network, dead server); the message names the URL and the manual step."""


class ChecksumError(CheckpointError):
    """A file's SHA-256 differs from the published or recorded one (the file has been deleted)."""


def sha256_of(path: str | Path) -> str:
    """The file's full SHA-256 (hex)."""
    return file_digest(path, length=64)


def hash_prefix_of(filename: str) -> str | None:
    """The SHA-256 prefix a torch.hub-style file name carries (``resnet50-19c8e357.pth`` -> ``19c8e357``)."""
    match = HASH_IN_NAME.search(Path(filename).name)
    return match.group(1) if match and match.group(1) else None


def verify_file(path: str | Path, sha256: str | None = None, sha256_prefix: str | None = None) -> str:
    """Return the file's SHA-256; raise :class:`ChecksumError` when it does not start with an expected digest."""
    digest = sha256_of(path)
    for expected in (sha256, sha256_prefix):
        if expected and not digest.startswith(expected.lower()):
            raise ChecksumError(f"{path}: SHA-256 {digest} does not match the expected {expected}")
    return digest


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split()) or type(error).__name__


def _transfer(url: str, partial: Path, timeout: float) -> None:
    """One request: append the rest of ``url`` to ``partial`` (resuming), or restart it when the server must."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kdbench"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return  # nothing left to send: the part is complete (the checksum decides)
        raise
    with response:
        status = getattr(response, "status", 200)
        resumed = have and status == 206
        expected = response.headers.get("Content-Length")
        mode = "ab" if resumed else "wb"  # 200 to a range request: the server starts over, so do we
        with open(partial, mode) as handle:
            shutil.copyfileobj(response, handle, _CHUNK)
            written = handle.tell() - (have if resumed else 0)
            handle.flush()
            os.fsync(handle.fileno())
        if expected is not None and written < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - written)


def download(
    url: str,
    destination: str | Path,
    *,
    sha256: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
    manual: str | None = None,
) -> str:
    """Fetch ``url`` into ``destination`` (resuming a ``.part`` left by an earlier attempt); return its SHA-256.

    Raises :class:`DownloadError` (one line: URL, reason, manual step) when the file cannot be fetched, and
    :class:`ChecksumError` (after deleting the part) when it arrives but fails its check.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    step = manual or f"put the file at {destination} by hand"
    for _ in range(max(1, attempts)):
        try:
            _transfer(url, partial, timeout)
            break
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as error:
            last_error = error  # cut mid-transfer: the part stays, the next attempt resumes it
        except urllib.error.HTTPError as error:
            raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}; {step}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise DownloadError(f"cannot download {url} ({_reason(error)}); {step}") from None
    else:  # every attempt was cut
        size = partial.stat().st_size if partial.is_file() else 0
        raise DownloadError(
            f"download of {url} was interrupted ({_reason(last_error)}) with {size} bytes in {partial}; "
            f"run the same command again to resume, or {step}"
        )
    try:
        digest = verify_file(partial, sha256, sha256_prefix)
    except ChecksumError as error:
        partial.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: {error}; the download was deleted (run again to re-fetch it)") from None
    partial.replace(destination)
    return digest


def extract_member(archive: str | Path, suffix: str, destination: str | Path) -> str:
    """Copy the one member of tar ``archive`` whose name ends with ``suffix`` to ``destination``; return its name.

    The member is written to a temporary file and renamed, so the destination is never half-written.  Only
    regular files are taken (no links, devices or absolute paths are followed).
    """
    destination = Path(destination)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and ("/" + m.name.lstrip("./")).endswith("/" + suffix)]
        if not members:
            raise DownloadError(f"{archive} holds no {suffix}")
        member = min(members, key=lambda m: len(m.name))
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(destination.name + ".tmp")
        with source, open(temporary, "wb") as handle:
            shutil.copyfileobj(source, handle, length=_CHUNK)
        temporary.replace(destination)
        return member.name

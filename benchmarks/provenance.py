"""What a run was made from, for its record: the code tree, the teacher checkpoint and the dataset files read.

* ``code``: the git commit, whether the tree had changes (``dirty``), and the SHA-256 of those changes (``git diff
  HEAD --binary`` plus the names and contents of untracked, not ignored files), so that two records made from the
  same dirty tree can be told apart from records of another one.
* ``teacher``: the SHA-256 (first 16 hex digits) of the teacher checkpoint file the run distilled from.
* ``data``: the folder the dataset was actually read from and a fingerprint of the files read there
  (:meth:`datamodules.base.KDDataModule.data_provenance`: SHA-256 over each file's path relative to that folder, size
  and modification time, ``name+size+mtime``, not the contents: ImageNet is 150 GB), with the file count.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["code_state", "git", "teacher_digest"]

REPO = Path(__file__).resolve().parent.parent


def git(*args: str) -> subprocess.CompletedProcess[bytes] | None:
    """``git <args>`` in the kdbench checkout; None when git is missing, fails or this is no checkout."""
    try:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result if result.returncode == 0 else None


@lru_cache(maxsize=1)
def code_state() -> dict[str, Any]:
    """The code tree: commit, dirty flag and a digest of the uncommitted changes (once per process)."""
    head = git("rev-parse", "HEAD")
    if head is None:
        return {"commit": None, "dirty": None, "diff_sha256": None, "note": "not a git checkout"}
    diff = git("diff", "HEAD", "--binary")
    untracked = git("ls-files", "--others", "--exclude-standard", "-z")
    sha = hashlib.sha256(diff.stdout if diff else b"")
    names = [n for n in (untracked.stdout.split(b"\0") if untracked else []) if n]
    for name in sorted(names):
        sha.update(b"\0untracked\0" + name + b"\0")
        with contextlib.suppress(OSError):
            sha.update((REPO / name.decode()).read_bytes())
    dirty = bool(diff and diff.stdout) or bool(names)
    return {
        "commit": head.stdout.decode().strip(),
        "dirty": dirty,
        "diff_sha256": sha.hexdigest() if dirty else None,
        "untracked_files": len(names),
    }


def teacher_digest(path: str | Path | None) -> str | None:
    """``sha256:<16 hex digits>`` of the teacher checkpoint file (memoised: :func:`kd_modules.offline.teacher_digest`),
    None without one."""
    if not path or not os.path.isfile(path):
        return None
    from kd_modules.offline import teacher_digest as digest

    return "sha256:" + digest(path)

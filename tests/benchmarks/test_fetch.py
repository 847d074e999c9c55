"""Released teachers fetched from a local HTTP server on 127.0.0.1 in the real archive formats, checked on load.

Fixtures: a torchvision-style bare state dict named ``<arch>-<sha256 prefix>.pth``; mdistiller's
``cifar_teachers.tar`` holding RepDistiller-style ``{'epoch', 'model', 'accuracy', 'optimizer'}`` files under
``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`` (keys dumped from RepDistiller's model files,
``tests/models/reference_keys``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import fetch
from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import Pair, ReleasedTeacher, Row, Table
from models import releases
from models.checkpoints import load_network
from models.download import ChecksumError, DownloadError
from models.releases import Release, check_release, fetch_release
from tests.models.test_checkpoints import synthetic_state


def _reference_bytes(arch: str, seed: int = 0, prefix: str = "") -> bytes:
    state = {prefix + k: v for k, v in synthetic_state(arch, seed).items()}
    buffer = io.BytesIO()
    torch.save({"epoch": 240, "model": state, "accuracy": 75.0, "optimizer": {"param_groups": []}}, buffer)
    return buffer.getvalue()


def _cifar_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar_teachers/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def served_cifar(http_server, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """mdistiller's archive with resnet56 and wrn_40_2 on the local server; the catalogue points at it."""
    files = {f"{a}_vanilla/ckpt_epoch_240.pth": _reference_bytes(a) for a in ("resnet56", "wrn_40_2")}
    files["wrn_40_2_vanilla/ckpt_epoch_240.pth"] = _reference_bytes("wrn_40_2", prefix="module.")  # DataParallel
    http_server.files["/checkpoints/cifar_teachers.tar"] = _cifar_archive(files)
    for arch in ("resnet56", "wrn_40_2", "vgg13"):
        key = f"cifar100/{arch}"
        monkeypatch.setitem(
            releases.RELEASES,
            key,
            dataclasses.replace(
                releases.RELEASES[key],
                archive_url=http_server.url("/checkpoints/cifar_teachers.tar"),
                urls=(http_server.url(f"/repo/{arch}_vanilla/ckpt_epoch_240.pth"),),
            ),
        )
    return files


def test_cifar_teacher_from_the_mdistiller_archive_is_unpacked_key_mapped_and_recorded(
    served_cifar, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    release = releases.RELEASES["cifar100/wrn_40_2"]
    path = fetch_release(release, tmp_path)
    assert path == tmp_path / "teachers/cifar100/wrn_40_2_vanilla/ckpt_epoch_240.pth"
    assert path.read_bytes() == served_cifar["wrn_40_2_vanilla/ckpt_epoch_240.pth"]  # kept byte for byte
    recorded = json.loads((tmp_path / "teachers/checksums.json").read_text())
    assert recorded[release.path] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "teachers/archives/cifar_teachers.tar" in recorded
    network = load_network("wrn_40_2", 100, path)  # the DataParallel "module." prefix is mapped away
    assert torch.equal(network.fc.weight, synthetic_state("wrn_40_2")["fc.weight"])
    assert check_release(release, tmp_path) is None


def test_the_archive_is_downloaded_once_for_every_teacher(served_cifar, http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for arch in ("resnet56", "wrn_40_2"):
        fetch_release(releases.RELEASES[f"cifar100/{arch}"], tmp_path)
    assert [p for p, _ in http_server.requests] == ["/checkpoints/cifar_teachers.tar"]


def test_a_teacher_missing_from_the_archive_comes_from_the_second_source(
    served_cifar, http_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    http_server.files["/repo/vgg13_vanilla/ckpt_epoch_240.pth"] = _reference_bytes("vgg13")
    path = fetch_release(releases.RELEASES["cifar100/vgg13"], tmp_path)
    assert load_network("vgg13", 100, path) is not None


def test_a_changed_file_is_refused_against_the_recorded_digest(served_cifar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    release = releases.RELEASES["cifar100/resnet56"]
    path = fetch_release(release, tmp_path)
    path.write_bytes(_reference_bytes("resnet56", seed=1))  # same architecture, other weights
    problem = check_release(release, tmp_path)
    assert problem is not None and "does not match the expected" in problem and str(path) in problem
    # Fetching again deletes the changed file (and says so), then takes the released one out of the archive.
    said: list[str] = []
    fetch_release(release, tmp_path, log=said.append)
    assert said and said[0].startswith(f"deleted {path}: ")
    assert path.read_bytes() == served_cifar["resnet56_vanilla/ckpt_epoch_240.pth"]


def _torchvision_fixture(http_server, tmp_path: Path) -> Release:  # type: ignore[no-untyped-def]
    import torchvision

    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)
    data = buffer.getvalue()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    http_server.files[f"/models/{name}"] = data
    return Release(
        "imagenet/resnet18",
        "resnet18",
        1000,
        f"teachers/imagenet/{name}",
        (http_server.url(f"/models/{name}"),),
        sha256_prefix=name.split("-")[1][:8],
    )


def test_torchvision_weights_are_checked_against_the_hash_in_their_name(http_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    release = _torchvision_fixture(http_server, tmp_path)
    path = fetch_release(release, tmp_path)
    assert path == tmp_path / release.path and check_release(release, tmp_path) is None
    assert not (tmp_path / "teachers/checksums.json").exists()  # a published digest needs no record
    # A server handing out other bytes under that name: the download fails its check and is deleted.
    http_server.files[f"/models/{path.name}"] = b"not the weights"
    path.unlink()
    with pytest.raises(ChecksumError, match="deleted"):
        fetch_release(release, tmp_path)
    assert not path.exists() and not list(path.parent.glob("*.part"))


def test_offline_fetch_is_one_line_with_every_url_and_the_manual_step(tmp_path: Path) -> None:
    release = dataclasses.replace(
        releases.RELEASES["cifar100/resnet56"],
        archive_url="http://127.0.0.1:9/cifar_teachers.tar",
        urls=("http://127.0.0.1:9/resnet56_vanilla/ckpt_epoch_240.pth",),
    )
    with pytest.raises(DownloadError) as error:
        fetch_release(release, tmp_path, timeout=5)
    message = str(error.value)
    assert "\n" not in message
    assert "127.0.0.1:9/cifar_teachers.tar" in message and "127.0.0.1:9/resnet56_vanilla" in message
    assert message.endswith(
        f"without network access, download http://127.0.0.1:9/cifar_teachers.tar, untar it and copy "
        f"resnet56_vanilla/ckpt_epoch_240.pth to {tmp_path / release.path}"
    )
    assert fetch.main(["teachers", "--table", "norm.t8", "--data-root", str(tmp_path), "--timeout", "5"]) == 2


# ------------------------------------------------------------------------------------------------- planning
PAIR = Pair("resnet56", "resnet20")


def _table(**extra) -> Table:  # type: ignore[no-untyped-def]
    rows = [Row("Teacher", "teacher"), Row("KD", "KD")]
    return Table("t", "t", "cifar100", "crd_cifar100", [PAIR], rows, teacher_recipe="crd_cifar100", **extra)


def _plan(table: Table, root: Path, teachers: str | None = None):  # type: ignore[no-untyped-def]
    return build_plan(
        table, load_preset("full"), RunStore(root / "store"), data_root="data", teacher_root=str(root),
        teachers=teachers,
    )  # fmt: skip


def test_released_cifar_teachers_replace_trained_ones_and_are_verified(served_cifar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table = _table(teachers="released")
    missing = _plan(table, tmp_path)
    kd = missing.runs[missing.cells[("KD", PAIR.label)][0]]
    assert missing.blocked_cells[("KD", PAIR.label)].startswith("released resnet56 teacher weights not found at")
    path = fetch_release(releases.RELEASES["cifar100/resnet56"], tmp_path)
    plan = _plan(table, tmp_path)
    kd = plan.runs[plan.cells[("KD", PAIR.label)][0]]
    assert ("KD", PAIR.label) not in plan.blocked_cells and kd.depends_on == []
    assert kd.config["model"]["init_args"]["teacher"]["checkpoint"] == str(path)
    assert any("Teachers: released weights" in note for note in plan.table.notes)
    # --teachers trained: the teacher is a run of its own again, exactly as a table without the choice plans it.
    trained = _plan(table, tmp_path, teachers="trained")
    legacy = _plan(_table(), tmp_path)
    assert trained.cells[("KD", PAIR.label)] == legacy.cells[("KD", PAIR.label)]
    assert trained.runs[trained.cells[("KD", PAIR.label)][0]].depends_on


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"twelve bytes", "cannot read checkpoint"),  # a 12-byte file at the teacher path
        ("vgg13", "holds vgg13, not resnet56"),  # a whole checkpoint of another network
    ],
)
def test_a_wrong_teacher_file_blocks_its_cells_with_one_line_naming_it(
    content: object, expected: str, tmp_path: Path
) -> None:
    target = tmp_path / releases.RELEASES["cifar100/resnet56"].path
    target.parent.mkdir(parents=True)
    target.write_bytes(content if isinstance(content, bytes) else _reference_bytes(str(content)))
    assert target.stat().st_size != 12 or content == b"twelve bytes"
    plan = _plan(_table(teachers="released"), tmp_path)
    reason = plan.blocked_cells[("KD", PAIR.label)]
    assert reason.startswith("released resnet56 teacher rejected: ") and str(target) in reason
    assert expected in reason and "\n" not in reason


def test_a_torchvision_file_with_the_wrong_digest_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "teachers/imagenet/resnet18-5c106cde.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"twelve bytes")
    released = {"resnet18": ReleasedTeacher("teachers/imagenet/resnet18-5c106cde.pth")}
    table = Table("t", "t", "imagenet", "imagenet_b256_step", [Pair("resnet18", "resnet18")],
                  [Row("KD", "KD")], teacher_checkpoints=released)  # fmt: skip
    reason = next(iter(_plan(table, tmp_path).blocked_cells.values()))
    digest = hashlib.sha256(b"twelve bytes").hexdigest()
    assert reason == (
        f"released resnet18 teacher rejected: {target}: SHA-256 {digest[:16]}... does not match the expected 5c106cde"
    )


def test_dry_run_prints_the_rejection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.run import main

    target = tmp_path / releases.RELEASES["cifar100/resnet32x4"].path
    target.parent.mkdir(parents=True)
    target.write_bytes(b"twelve bytes")
    assert main(["norm.t8", "--dry-run", "--data-root", str(tmp_path), "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if "teacher rejected" in line]
    assert lines and lines[0].startswith(f"released resnet32x4 teacher rejected: cannot read checkpoint {target}")


def test_a_launch_fetches_the_missing_teachers_first(served_cifar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.run import fetch_released_teachers, parse_args, plan_tables

    args = parse_args(["nd.t4a", "--pairs", "resnet56->resnet20", "--data-root", str(tmp_path)])
    plans = plan_tables(["nd.t4a"], args, quiet=True)
    assert any("not found" in r for r in plans[0].blocked_cells.values())
    assert fetch_released_teachers(plans, args) is True
    replanned = plan_tables(["nd.t4a"], args, quiet=True)
    assert not any("teacher" in reason for reason in replanned[0].blocked_cells.values() if "rejected" in reason)
    assert not any("not found" in reason for reason in replanned[0].blocked_cells.values())
    assert (tmp_path / releases.RELEASES["cifar100/resnet56"].path).is_file()
    assert fetch_released_teachers(replanned, args) is False  # in place and verified: nothing to fetch

"""Numerics are part of a run's identity only where they differ from the references' fp32 eager arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.numerics import normalize_numerics, numerics_label
from benchmarks.plan import Preset, build_plan, load_preset, run_identity
from benchmarks.render import numerics_line
from benchmarks.store import RunStore
from benchmarks.tables import load_table

STORE = RunStore("/nonexistent-kdbench-store")


def _plan(preset: Preset, methods: list[str]):  # type: ignore[no-untyped-def]
    return build_plan(
        load_table("table1"),
        preset,
        STORE,
        data_root="/nonexistent",
        pairs=["resnet32x4->resnet8x4"],
        methods=methods,
        teachers="trained",
    )


def test_spelled_out_default_numerics_are_the_same_runs() -> None:
    full = _plan(load_preset("full"), ["KD", "FitNet"])
    spelled = Preset(
        "spelled",
        config={"numerics": {"channels_last": False, "compile": "none", "teacher_cache": False}, "trainer": {}},
    )
    same = _plan(spelled, ["KD", "FitNet"])
    assert list(full.runs) == list(same.runs)
    assert all("numerics" not in spec.config for spec in same.ordered())


def test_fast_runs_have_their_own_identities_and_say_so() -> None:
    full, fast = _plan(load_preset("full"), ["KD"]), _plan(load_preset("fast"), ["KD"])
    assert not set(full.runs) & set(fast.runs)  # teacher and students: never the same runs
    for spec in fast.ordered():
        assert spec.config["trainer"]["precision"] == "bf16-mixed"
        assert spec.config["numerics"] == {"channels_last": True, "compile": "reduce-overhead"}
        assert numerics_label(spec.config) == "bf16-mixed, channels_last, compiled (reduce-overhead)"
    assert numerics_line(full) == "Numerics: fp32 eager (every cell)."
    assert numerics_line(fast) == "Numerics: bf16-mixed, channels_last, compiled (reduce-overhead) (every cell)."


def test_the_teacher_cache_counts_only_for_runs_it_serves() -> None:
    fast = _plan(load_preset("fast"), ["KD", "FitNet"])
    cached = _plan(load_preset("fast_cache"), ["KD", "FitNet"])
    by_method = {spec.method: spec for spec in cached.ordered() if spec.kind == "student"}
    assert by_method["KD"].config["numerics"]["teacher_cache"] is True
    assert "teacher_cache" not in by_method["FitNet"].config["numerics"]
    shared = set(fast.runs) & set(cached.runs)
    # the teacher and FitNet are the fast runs themselves; KD is a new run
    assert {fast.runs[r].method for r in shared} == {"Vanilla", "FitNet"}
    assert "teacher cache (float16) (KD)" in numerics_line(cached)


def test_normalize_keeps_only_what_changes_the_run() -> None:
    config = {
        "model": {"class_path": "kd_modules.Vanilla", "init_args": {"student": "resnet8"}},
        "data": {"class_path": "datamodules.CIFAR100", "init_args": {}},
        "numerics": {"channels_last": True, "compile": "none", "teacher_cache": True, "teacher_cache_dtype": "float32"},
    }
    normalize_numerics(config)
    assert config["numerics"] == {"channels_last": True}  # Vanilla has no teacher: no cache
    tiny = {
        "model": {"class_path": "kd_modules.KD", "init_args": {"student": "resnet8", "teacher": {"arch": "resnet20"}}},
        "data": {"class_path": "datamodules.TinyImageNet", "init_args": {}},
        "numerics": {"teacher_cache": True},
    }
    normalize_numerics(tiny)
    assert "numerics" not in tiny  # rotations: no enumerable views, the run is the reference run
    assert run_identity(tiny) == run_identity({k: v for k, v in tiny.items() if k != "numerics"})


def test_the_cli_applies_numerics_without_changing_state_dict_keys(cifar_root: Path, fit_args, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.cli import KDBenchCLI

    base = [a for a in fit_args(cifar_root, tmp_path, "--model=Vanilla", "--model.student=resnet8") if a != "fit"]
    eager = KDBenchCLI(args=base, run=False).model
    fast = KDBenchCLI(args=[*base, "--numerics.channels_last=true", "--numerics.compile=default"], run=False).model
    assert fast.numerics.channels_last and fast.numerics.compile == "default"
    conv = next(m for m in fast.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert "forward" in vars(fast.student) and "forward" not in vars(eager.student)  # compiled in place
    assert list(fast.state_dict()) == list(eager.state_dict())


def test_cost_model_follows_the_numerics() -> None:
    from benchmarks.cost import estimate_gpu_seconds, step_model

    def kd(preset: str) -> dict:
        plan = _plan(load_preset(preset), ["KD"])
        return next(s.config for s in plan.ordered() if s.kind == "student")

    full, fast, cached = kd("full"), kd("fast"), kd("fast_cache")
    assert estimate_gpu_seconds(fast, 50_000, 100) < estimate_gpu_seconds(full, 50_000, 100)
    steps = {name: step_model(config, 100) for name, config in (("full", full), ("cached", cached))}
    assert steps["cached"]["flops"] < steps["full"]["flops"] / 2  # resnet32x4's forward is 3x resnet8x4's
    assert steps["cached"]["network_ops"] < steps["full"]["network_ops"]


def test_cpu_measurements_cannot_calibrate_gpu_estimates(tmp_path: Path) -> None:
    import json

    from benchmarks.cost import calibrate_gpu
    from benchmarks.errors import KDBenchError

    result = tmp_path / "cpu.json"
    result.write_text(json.dumps({"device": "cpu", "arms": {}}))
    with pytest.raises(KDBenchError, match="not a GPU"):
        calibrate_gpu([result], tmp_path / "calibration.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read a benchmarks.speed train result (No such file or directory)"),
        ("{not json", "cannot read a benchmarks.speed train result (JSONDecodeError)"),
        ("[1, 2]", "not a benchmarks.speed train result (a JSON object with table, method"),
        ('{"device": "cuda", "table": "table1", "arms": {}}', "missing method, pair, preset, batch_size"),
    ],
)
def test_calibrate_gpu_names_a_bad_result_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    from benchmarks.cost import main

    result = tmp_path / "result.json"
    if content is not None:
        result.write_text(content)
    out = tmp_path / "calibration.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate-gpu", str(result), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(result) in err
    assert not out.exists()  # nothing written

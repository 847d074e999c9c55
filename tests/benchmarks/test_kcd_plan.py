"""KCD and RCO in the planner: Algorithm 1's CE-only stage is the table's plain-student run, trained once."""

from __future__ import annotations

from pathlib import Path

from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import load_table


def test_plain_student_stage_is_reused_not_retrained(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    plan = build_plan(load_table("kcd.t7"), load_preset("full"), store, data_root="data", trials=2)
    for pair in ("resnet56->resnet20_half", "resnet56->resnet20"):
        for trial in range(2):
            plain = plan.runs[plan.cells[("Student (baseline)", pair)][trial]]
            kcd = plan.runs[plan.cells[("KCD", pair)][trial]]
            args = kcd.config["model"]["init_args"]
            # theta_0 and theta_1 are the same-trial plain-student run's initial.pth and final.pth ...
            assert args["student_init"] == str(store.run_dir(plain.run_id) / "initial.pth")
            assert args["ce_student_checkpoint"] == str(store.run_dir(plain.run_id) / "final.pth")
            assert plain.run_id in kcd.depends_on and plain.kind == "student"
            assert kcd.offline and kcd.offline[0][0] == "kcd_consistency"
    # ... so KCD adds no stage run of its own (the only stages are the AB row's initialisation stage).
    stages = [r.config["model"]["class_path"] for r in plan.runs.values() if r.kind == "stage"]
    assert stages and all(path.endswith(".ABInit") for path in stages), stages
    # KCD + RCO also reads the teacher run's route; plain RCO only that.
    teacher = next(r for r in plan.runs.values() if r.kind == "teacher")
    assert teacher.config["run"]["route"] == [0.25, 0.5, 0.75]
    rco = plan.runs[plan.cells[("RCO", "resnet56->resnet20")][0]]
    assert rco.config["model"]["init_args"]["route_dir"] == str(store.run_dir(teacher.run_id) / "route")
    kcd_rco = plan.runs[plan.cells[("KCD+RCO", "resnet56->resnet20")][0]]
    assert teacher.run_id in kcd_rco.depends_on and "route_dir" in kcd_rco.config["model"]["init_args"]
    assert not rco.blocked and not kcd_rco.blocked
    kcd_ab = plan.runs[plan.cells[("KCD+AB", "resnet56->resnet20")][0]]
    assert not kcd_ab.blocked and kcd_ab.config["model"]["init_args"]["combine"] == "ab"


def test_kcd_tables_have_no_blocked_kcd_rows_but_for_ab(tmp_path: Path) -> None:
    for name in ("kcd.t1", "kcd.t2", "kcd.t3a", "kcd.t3b", "kcd.t4", "kcd.t5", "kcd.t6", "kcd.t7", "kcd.t8", "table1"):
        # smoke: missing released teachers are replaced by smoke-trained ones, so only real gaps block a cell.
        plan = build_plan(load_table(name), load_preset("smoke"), RunStore(tmp_path / name), data_root="data")
        for (row, pair), reason in plan.blocked_cells.items():
            method = plan.table.row(row).method
            assert method not in ("KCD", "RCO"), (name, row, pair, reason)
    plan = build_plan(load_table("kcd.t3b"), load_preset("smoke"), RunStore(tmp_path / "t3b"), data_root="data")
    theta_2 = plan.runs[plan.cells[("theta_2", "resnet50->mobilenetv2_050")][0]]
    seed_0_teacher = plan.runs[plan.cells[("theta_0", "resnet50->mobilenetv2_050")][0]].teacher_run
    assert theta_2.teacher_run != seed_0_teacher
    assert theta_2.config["model"]["init_args"]["transform_teacher_checkpoint"].startswith(
        str(RunStore(tmp_path / "t3b").run_dir(seed_0_teacher))
    )


def test_only_teachers_whose_route_a_run_reads_save_it(tmp_path: Path) -> None:
    """RCO asks for the teacher's route through its prerequisite: other tables' teachers save none, and a teacher
    that finished before anything asked for its route blocks the RCO cell instead of failing the run."""
    from benchmarks.plan import merge_runs

    store = RunStore(tmp_path)
    kd_only = build_plan(load_table("kcd.t7"), load_preset("full"), store, data_root="data", methods=["KD"])
    teacher = next(r for r in kd_only.runs.values() if r.kind == "teacher")
    assert "route" not in teacher.config["run"]
    with_rco = build_plan(load_table("kcd.t7"), load_preset("full"), store, data_root="data", methods=["RCO"])
    same = with_rco.runs[teacher.run_id]
    assert same.config["run"]["route"] == [0.25, 0.5, 0.75]
    # Launched together, the merged run keeps the route whichever table planned the teacher first.
    merged = {s.run_id: s for s in merge_runs([kd_only, with_rco])}
    assert merged[teacher.run_id].config["run"]["route"] == [0.25, 0.5, 0.75]
    # A teacher that finished without its route: the RCO cells say why they cannot run.
    run_dir = store.run_dir(teacher.run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text('{"metrics": {"best_top1": 70.0}}')
    blocked = build_plan(load_table("kcd.t7"), load_preset("full"), store, data_root="data", methods=["RCO"])
    reason = blocked.blocked_cells[("RCO", "resnet56->resnet20")]
    assert reason.startswith(f"teacher_route: the finished run {teacher.run_id} has no route"), reason

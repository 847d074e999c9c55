"""``--teachers released|trained``: what the default (released, for the CRD-protocol tables) changes, and only that.

The golden file holds the identities of the time when every CIFAR table trained its teachers; ``--teachers trained``
reproduces them exactly (``test_golden_identities``).  Under the default, a student that distils from a released
teacher is a different run (another teacher), so its identity differs; every run that reads no released teacher,
directly or through a stage, must keep its golden identity.
"""

from __future__ import annotations

import json

from benchmarks.plan import build_plan, load_preset
from benchmarks.store import RunStore
from benchmarks.tables import list_tables, load_table
from tests.benchmarks.golden_identities import DATA_ROOT, GOLDEN


def test_the_released_default_changes_only_runs_that_read_a_released_teacher() -> None:
    golden = json.loads(GOLDEN.read_text())["full"]
    store = RunStore("/nonexistent-kdbench-store")
    released_tables = [n for n in list_tables() if load_table(n).teachers == "released"]
    assert {"table1", "table2", "norm.t1", "letkd.t1", "nd.t1"} <= set(released_tables)
    changed = kept = 0
    for name in released_tables:
        plan = build_plan(load_table(name), load_preset("full"), store, data_root=DATA_ROOT, teacher_root=DATA_ROOT)
        golden_ids = set(golden[name].values())
        reads_release: dict[str, bool] = {}
        for spec in plan.ordered():  # dependency order: a stage is decided before the runs that read it
            # A stage dropped from the plan (the student it feeds is blocked: the release is absent here) is judged
            # by its identity: a stage that reads a release directly or through its own stages is no golden run.
            reads_release[spec.run_id] = bool(spec.teacher_source) or any(
                reads_release.get(dep, dep not in golden_ids) for dep in spec.depends_on
            )
            if reads_release[spec.run_id]:
                assert spec.run_id not in golden_ids, f"{name} {spec.label}: a released teacher, a golden id"
                changed += 1
            else:
                assert spec.run_id in golden_ids, f"{name} {spec.label} reads no released teacher but changed id"
                kept += 1
        assert not any(s.kind == "teacher" for s in plan.ordered() if s.run_id not in golden_ids)
        assert any("Teachers: released weights" in note for note in plan.table.notes)
    assert changed and kept


def test_a_run_waiting_for_its_released_teacher_has_the_identity_it_trains_under_once_the_file_is_there(
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """The teacher files are absent here: every student that reads one is blocked, yet planned and completed in
    full, so fetching the teacher never changes which run the cell asks for (the KCD stages included)."""
    from benchmarks.plan import Planner

    store = RunStore("/nonexistent-kdbench-store")
    names = ["table3", "norm.t1", "kcd.t6", "nd.f5"]
    waiting = {n: build_plan(load_table(n), load_preset("full"), store, data_root=DATA_ROOT, teacher_root=DATA_ROOT)
               for n in names}  # fmt: skip
    absent = Planner.teacher_source

    def present(self, arch):  # type: ignore[no-untyped-def]
        path, problem = absent(self, arch)
        return path, None if problem and "not found" in problem else problem

    monkeypatch.setattr(Planner, "teacher_source", present)
    blocked = 0
    for name in names:
        there = build_plan(load_table(name), load_preset("full"), store, data_root=DATA_ROOT, teacher_root=DATA_ROOT)
        before = {(s.kind, s.label): s for s in waiting[name].runs.values()}
        after = {(s.kind, s.label): s for s in there.runs.values()}
        for key, spec in before.items():
            blocked += bool(spec.blocked and "not found" in spec.blocked)
            assert after[key].run_id == spec.run_id, f"{name} {key}: {spec.run_id} -> {after[key].run_id}"
    assert blocked > 100

"""The golden file of run identities: every run of every table under the full and smoke presets.

``python -m tests.benchmarks.golden_identities`` (re)writes ``golden_identities.json`` from the planner as it is
now.  It is written once, before a change to planning, configs or methods, and committed; the test then compares
every later plan against it.  A changed identity orphans users' finished runs, so a regeneration must be listed
and justified in the change's note.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden_identities.json")
PRESETS = ("full", "smoke")
# A data root that holds no dataset: identities never depend on where the data lies (data.init_args.root is not
# part of them), and released teacher files are absent, as on a fresh checkout.
DATA_ROOT = "/nonexistent-kdbench-data"


def current_identities(teachers: str | None = "trained") -> dict[str, Any]:
    """``{preset: {table: {"<kind> | <label>": run id}}}`` for every table of the catalogue.

    ``teachers="trained"`` (``--teachers trained``) is how every CIFAR table planned its teachers when the file was
    written; the tables' own default since then (``None``: released teachers for the CRD-protocol tables) changes
    the identities of the students that distil from them, deliberately (a different teacher), see
    ``tests/benchmarks/test_teacher_choice.py``.
    """
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import list_tables, load_table

    store = RunStore("/nonexistent-kdbench-store")
    identities: dict[str, Any] = {}
    for preset_name in PRESETS:
        preset = load_preset(preset_name)
        per_table: dict[str, dict[str, str]] = {}
        for name in list_tables():
            plan = build_plan(
                load_table(name), preset, store, data_root=DATA_ROOT, teacher_root=DATA_ROOT, teachers=teachers
            )
            runs: dict[str, str] = {}
            for spec in plan.ordered():
                key = f"{spec.kind} | {spec.label}"
                if key in runs and runs[key] != spec.run_id:
                    key = f"{key} | {spec.run_id}"  # two runs under one label: both kept, told apart by id
                runs[key] = spec.run_id
            per_table[name] = dict(sorted(runs.items()))
        identities[preset_name] = per_table
    return identities


def main() -> int:
    GOLDEN.write_text(json.dumps(current_identities(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The golden file of run identities: every run of every table under the full and smoke presets.

``python -m tests.benchmarks.golden_identities`` adds the runs that are new (a new table, a new row, a method that
became runnable) to ``golden_identities.json`` and refuses when an identity it holds changed or disappeared;
``--rewrite`` writes the file from scratch (only for a deliberate change of identities, listed and justified in the
change's note: a changed identity orphans users' finished runs).  The file was first written before the
configuration refactor; the test compares every later plan against it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden_identities.json")
#: Golden variants: name -> (preset, --teachers).  ``full`` and ``smoke`` plan every teacher as a run trained here
#: (``--teachers trained``), as every CIFAR table did when the file was first written; ``full/table-teachers`` plans
#: each table with its own choice (released teachers for the CRD-protocol tables, read from absent files here).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "full": ("full", "trained"),
    "smoke": ("smoke", "trained"),
    "full/table-teachers": ("full", None),
}
PRESETS = tuple(VARIANTS)
# A data root that holds no dataset: identities never depend on where the data lies (data.init_args.root is not
# part of them), and released teacher files are absent, as on a fresh checkout.
DATA_ROOT = "/nonexistent-kdbench-data"


def current_identities() -> dict[str, Any]:
    """``{variant: {table: {"<kind> | <label>": run id}}}`` for every table of the catalogue (see VARIANTS).

    The tables' own teacher choice (released teachers for the CRD-protocol tables) changed the identities of the
    students that distil from them, deliberately (a different teacher; ``tests/benchmarks/test_teacher_choice.py``):
    ``--teachers trained`` keeps every identity the file first recorded.
    """
    from benchmarks.plan import build_plan, load_preset
    from benchmarks.store import RunStore
    from benchmarks.tables import list_tables, load_table

    store = RunStore("/nonexistent-kdbench-store")
    identities: dict[str, Any] = {}
    for variant, (preset_name, teachers) in VARIANTS.items():
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
        identities[variant] = per_table
    return identities


def differences(golden: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(changed, gone, new) entries of ``now`` against ``golden``, as readable lines."""
    changed, gone, new = [], [], []
    for preset in sorted(set(golden) | set(now)):
        tables_then, tables_now = golden.get(preset, {}), now.get(preset, {})
        for table in sorted(set(tables_then) | set(tables_now)):
            then, current = tables_then.get(table, {}), tables_now.get(table, {})
            for key, run_id in then.items():
                if key not in current:
                    gone.append(f"{preset} {table} {key} ({run_id})")
                elif current[key] != run_id:
                    changed.append(f"{preset} {table} {key}: {run_id} -> {current[key]}")
            new += [f"{preset} {table} {key}" for key in current if key not in then]
    return changed, gone, new


def main(argv: list[str]) -> int:
    now = current_identities()
    if "--rewrite" not in argv and GOLDEN.is_file():
        changed, gone, new = differences(json.loads(GOLDEN.read_text()), now)
        if changed or gone:
            print(f"{len(changed)} identities changed and {len(gone)} are gone: not written (see --rewrite)")
            for line in (changed + gone)[:20]:
                print(f"  {line}")
            return 1
        print(f"{len(new)} new entries")
    GOLDEN.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run identities are a promise to users: every run of every table keeps the identity the golden file recorded.

The golden file was written by ``python -m tests.benchmarks.golden_identities`` before the configuration
refactor; a difference here means users' finished runs would be orphaned (trained again under a new id).
"""

from __future__ import annotations

import json

from tests.benchmarks.golden_identities import GOLDEN, PRESETS, current_identities


def test_every_run_of_every_table_keeps_its_golden_identity() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == sorted(PRESETS)
    now = current_identities()
    changed, missing, added = [], [], []
    for preset, tables in golden.items():
        assert sorted(now[preset]) == sorted(tables), f"{preset}: the list of tables changed"
        for table, runs in tables.items():
            current = now[preset][table]
            for key, run_id in runs.items():
                if key not in current:
                    missing.append(f"{preset} {table} {key} ({run_id})")
                elif current[key] != run_id:
                    changed.append(f"{preset} {table} {key}: {run_id} -> {current[key]}")
            added += [f"{preset} {table} {key}" for key in current if key not in runs]
    report = [f"{len(changed)} changed, {len(missing)} gone, {len(added)} new"]
    report += [f"  changed {line}" for line in changed[:20]]
    report += [f"  gone {line}" for line in missing[:20]]
    report += [f"  new {line}" for line in added[:20]]
    assert not (changed or missing or added), "\n".join(report)

"""Run identities are a promise to users: every run of every table keeps the identity the golden file recorded.

The golden file was written by ``python -m tests.benchmarks.golden_identities`` before the configuration
refactor; a difference here means users' finished runs would be orphaned (trained again under a new id).  Runs
that are new (a new table or row) are added to the file with the same command, which refuses changed identities.
"""

from __future__ import annotations

import json

from tests.benchmarks.golden_identities import GOLDEN, PRESETS, current_identities, differences


def test_every_run_of_every_table_keeps_its_golden_identity() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == sorted(PRESETS)
    changed, gone, new = differences(golden, current_identities())
    report = [f"{len(changed)} changed, {len(gone)} gone, {len(new)} new"]
    report += [f"  changed {line}" for line in changed[:20]]
    report += [f"  gone {line}" for line in gone[:20]]
    report += [f"  new {line} (add it: python -m tests.benchmarks.golden_identities)" for line in new[:20]]
    assert not (changed or gone or new), "\n".join(report)


def test_the_difference_names_changed_gone_and_new_runs() -> None:
    golden = {"full": {"t": {"student | KD": "a", "student | AT": "b"}}}
    now = {"full": {"t": {"student | KD": "c", "student | SP": "d"}}}
    assert differences(golden, now) == (
        ["full t student | KD: a -> c"],
        ["full t student | AT (b)"],
        ["full t student | SP"],
    )

"""The W&B workspace of a table, built offline with wandb-workspaces: its spec holds what the dashboard promises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.dashboard import build_workspace, main, workspace_spec
from benchmarks.tables import REPO_ROOT


def _panels(spec: dict) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {section["name"]: section["panels"] for section in sections}


def test_workspace_groups_the_tables_runs_by_pair_with_a_panel_per_metric() -> None:
    spec = workspace_spec(build_workspace("demo", "team", "kdbench"))
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("team", "kdbench", "kdbench demo")
    (runset,) = spec["spec"]["section"]["runSets"]
    # only this table's runs (W&B config "table"), grouped by pair, best top-1 first
    assert runset["filters"]["filters"] == [
        {"key": {"section": "config", "name": "table"}, "op": "=", "value": "demo", "disabled": False}
    ]
    assert runset["grouping"] == [{"section": "config", "name": "pair.value"}]
    assert runset["sort"]["keys"] == [{"key": {"section": "summary", "name": "best_top1"}, "ascending": False}]
    # the runs table reads method x pair: method, trial and the summary accuracies pinned beside the run name
    pinned = runset["runFeed"]["columnPinned"]
    for column in ("config:method", "config:trial", "summary:best_top1", "summary:last_top1", "summary:wall_seconds"):
        assert pinned.get(column) is True, column
    panels = _panels(spec)
    lines = {
        m
        for section in panels.values()
        for p in section
        if p["viewType"] == "Run History Line Plot"
        for m in p["config"].get("metrics", [])
    }
    assert {"val/top1", "val/top5", "val/loss", "val/top1_best", "train/loss", "train/top1", "lr-SGD"} <= lines
    bars = [p["config"] for p in panels["Method x pair"] if p["viewType"] == "Bar Chart"]
    assert {b["metrics"][0] for b in bars} == {"summary_metrics.best_top1", "summary_metrics.last_top1"}
    assert all(b["groupBy"] == "method.value" for b in bars)


def test_dashboard_command_prints_the_spec_offline_and_refuses_an_unknown_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"PATH": "/usr/bin:/bin", "WANDB_API_KEY": "", "HOME": "/nonexistent"}
    printed = subprocess.run(
        [sys.executable, "-m", "benchmarks.dashboard", "fmnist", "--entity", "e", "--project", "p", "--print"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert json.loads(printed.stdout)["displayName"] == "kdbench fmnist"
    with pytest.raises(SystemExit) as exit_info:
        main(["nope", "--entity", "e", "--project", "p", "--print"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "unknown table 'nope'" in err

"""The report site: its content from the store (as the markdown tables read it), and the page in a real browser.

The browser test drives Debian's chromium through its chromedriver (``apt-get install chromium chromium-driver``)
with selenium; it is skipped where either is missing.  It loads a table page from disk, checks that the browser
logged no error, sorts the results table by a column by clicking its header, and saves a screenshot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.plan import build_plan, load_preset
from benchmarks.render import collect
from benchmarks.store import RunStore
from benchmarks.tables import load_table

PAIRS = ["resnet56->resnet20", "resnet110->resnet32"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _record(store: RunStore, run_id: str, best: float) -> None:
    folder = store.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"best_top1": best, "best_top5": best + 20, "last_top1": best - 1}
    record = {"run_id": run_id, "metrics": metrics, "smoke": False, "wall_seconds": 12.0}
    (folder / "record.json").write_text(json.dumps(record))
    (folder / "config.yaml").write_text("seed_everything: 0\n")


def _store_with_results(tmp_path: Path):  # type: ignore[no-untyped-def]
    """table1 on two pairs: KD with 3 trials (70, 71, 72) and 1 (73.5), Vanilla one of three, a failed teacher."""
    store = RunStore(tmp_path / "store")
    plan = build_plan(
        load_table("table1"),
        load_preset("full"),
        store,
        data_root="data",
        pairs=PAIRS,
        methods=["Teacher", "Vanilla", "KD", "DKD"],
        teachers="trained",  # the teacher cells are runs here (table1 reads released teachers by default)
    )
    for run_id, value in zip(plan.cells[("KD", PAIRS[0])], (70.0, 71.0, 72.0), strict=True):
        _record(store, run_id, value)
    _record(store, plan.cells[("KD", PAIRS[1])][0], 73.5)
    _record(store, plan.cells[("Vanilla", PAIRS[0])][0], 69.0)
    _record(store, plan.cells[("DKD", PAIRS[0])][0], 66.0)
    teacher = plan.cells[("Teacher", PAIRS[1])][0]
    store.run_dir(teacher).mkdir(parents=True)
    (store.run_dir(teacher) / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    wandb_run = store.run_dir(plan.cells[("KD", PAIRS[1])][0]) / "wandb.json"
    wandb_run.write_text(json.dumps({"url": "https://wandb.ai/team/kdbench/runs/abc", "offline": False}))
    return plan


def test_site_pages_hold_the_cells_their_reasons_and_links(tmp_path: Path) -> None:
    plan = _store_with_results(tmp_path)
    site = tmp_path / "site"
    index = report.write_site([plan], site)
    page = (site / "table1.html").read_text()
    assert index.name == "index.html" and 'href="table1.html"' in index.read_text()
    # the numbers the markdown shows: 71.00 ± 1.00 (3) against NORM T1's 70.66, Δ +0.34; one run has no spread
    assert "71.00 ± 1.00 (3)" in page and "70.66" in page and "+0.34" in page
    assert "73.50 (1/3)" in page and "± 0.00" not in page
    assert "RuntimeError: out of memory" in page  # the failed teacher's reason
    # Δ coloured by sign: +0.34 green (hue 140), DKD 66 vs the paper's number red (hue 0)
    assert "hsl(140," in page and "hsl(0," in page
    # links to the runs' files (relative, so the site opens from disk) and to the online W&B run
    kd = plan.cells[("KD", PAIRS[0])][0]
    assert f'href="../store/runs/{kd}/record.json"' in page and f'href="../store/runs/{kd}/config.yaml"' in page
    assert 'href="https://wandb.ai/team/kdbench/runs/abc"' in page
    assert "<script src=" not in page and "http://" not in page and "cdn" not in page.lower()
    assert (site / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the index shows the runner's coverage (cells whose every trial finished)
    frame = collect(plan)
    ok = frame[(frame["metric"] == "top1") & (frame["status"] == "ok")]
    assert f'data-value="{len(ok)}"' in index.read_text()


def test_report_command_names_a_bad_table_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main(["no_such_table", "--store", str(tmp_path / "store")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_table" in err and "table1" in err
    assert not (tmp_path / "store").exists()


@pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()), reason="chromium and chromium-driver not installed"
)
def test_page_loads_without_errors_sorts_and_renders_in_chromium(tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    plan = _store_with_results(tmp_path)
    site = tmp_path / "site"
    report.write_site([plan], site)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get((site / "table1.html").as_uri())
        assert "table1" in driver.title
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        image_ok = driver.execute_script(
            "const i = document.querySelector('figure img'); return i.complete && i.naturalWidth > 0;"
        )
        assert image_ok, "the plot did not load"

        def method_order() -> list[str]:
            cells = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr td.method")
            return [c.text.split(" (")[0] for c in cells]

        assert method_order() == ["Teacher", "Vanilla", "KD", "DKD"]  # table order
        ours = driver.find_elements(By.CSS_SELECTOR, "#results thead tr:nth-child(2) th")[0]  # ours, first pair
        ours.click()  # descending: KD 71 > Vanilla 69 > DKD 66, the teacher (not run there) last
        assert method_order() == ["KD", "Vanilla", "DKD", "Teacher"]
        assert ours.get_attribute("aria-sort") == "descending"
        ours.click()
        assert method_order() == ["DKD", "Vanilla", "KD", "Teacher"]  # ascending; empty values still last
        driver.find_element(By.CSS_SELECTOR, "#results thead th.method").click()  # by name, descending
        assert method_order() == ["Vanilla", "Teacher", "KD", "DKD"]
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
        shot = tmp_path / "table1.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        driver.quit()

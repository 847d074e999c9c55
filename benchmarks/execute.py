"""Running one planned run: write its config, start (or resume) it through the CLI, report how it ended."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.plan import RunSpec
from benchmarks.store import RECORD, RunStore

__all__ = ["RunOutcome", "execute_run", "execute_config", "quiet_lightning", "write_config", "failure_message"]

FAILED = "failed.json"


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "finished" | "skipped" (already finished) | "failed" | "blocked"
    seconds: float = 0.0
    message: str = ""
    resumed: bool = False


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run banners and advice so a table run prints one line per run."""
    os.environ.setdefault("WANDB_SILENT", "true")
    names = ["lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"]
    previous = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        warnings.filterwarnings("ignore", message=r".*treespec.*")
        try:
            yield
        finally:
            for name, level in previous.items():
                logging.getLogger(name).setLevel(level)


class _ConfigDumper(yaml.SafeDumper):
    """PyYAML writes ``123e4567`` unquoted (a string for its YAML 1.1 reader), but jsonargparse reads such a
    scalar as the float inf: a run id made of digits and one ``e`` (about 1 in 1,000) broke its run's config."""


_NUMBER_LIKE = re.compile(r"[-+]?(\.\d+|\d+(\.\d*)?)([eE][-+]?\d+)?|[-+]?\.?(inf|nan)", re.IGNORECASE)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if _NUMBER_LIKE.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def dump_config(config: dict[str, Any], sort_keys: bool = False) -> str:
    """A run config as YAML that reads back with every string a string (number-like strings quoted)."""
    return yaml.dump(config, Dumper=_ConfigDumper, sort_keys=sort_keys)


def write_config(spec: RunSpec, store: RunStore) -> Path:
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(dump_config(spec.config))
    return path


def cli_args(config_path: Path, resume_from: Path | None) -> list[str]:
    args = ["fit", "--config", str(config_path)]
    if resume_from is not None:
        args += ["--ckpt_path", str(resume_from)]
    return args


def execute_run(spec: RunSpec, store: RunStore) -> RunOutcome:
    """Run ``spec`` in this process unless its record exists; resume from ``last.ckpt`` when there is one.

    A failure is written to ``failed.json`` beside the run (the table shows the cell as failed) and does not
    stop the caller: other runs, and everything already finished, are kept.
    """
    if store.is_finished(spec.run_id):
        return RunOutcome(spec.run_id, "skipped")
    return execute_config(write_config(spec, store))


def execute_config(config_path: str | Path) -> RunOutcome:
    """Run the config written at ``<run dir>/config.yaml`` (how the parallel and SLURM launchers start runs).

    The run's folder is the config's own folder; its run id is ``run.run_id`` in the config.
    """
    from benchmarks.cli import KDBenchCLI

    config_path = Path(config_path)
    run_dir = config_path.parent
    run_id = str((yaml.safe_load(config_path.read_text()) or {}).get("run", {}).get("run_id") or run_dir.name)
    if (run_dir / RECORD).is_file():
        return RunOutcome(run_id, "skipped")
    last = run_dir / "checkpoints" / "last.ckpt"
    resume_from = last if last.is_file() else None
    failed_marker = run_dir / FAILED
    failed_marker.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        with quiet_lightning():
            KDBenchCLI(args=cli_args(config_path, resume_from))
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - one run's failure must not lose the others
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        failed_marker.write_text(json.dumps({"error": message, "traceback": traceback.format_exc()}, indent=2))
        return RunOutcome(run_id, "failed", time.perf_counter() - started, message, resume_from is not None)
    seconds = time.perf_counter() - started
    if not (run_dir / RECORD).is_file():
        message = "fit ended without a result record (interrupted?)"
        failed_marker.write_text(json.dumps({"error": message}, indent=2))
        return RunOutcome(run_id, "failed", seconds, message)
    return RunOutcome(run_id, "finished", seconds, resumed=resume_from is not None)


def failure_message(store: RunStore, run_id: str) -> str | None:
    path = store.run_dir(run_id) / FAILED
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return str(data.get("error", "failed"))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.execute <run dir>/config.yaml``: run one planned run; exit 0 when it finished."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m benchmarks.execute", description=main.__doc__)
    parser.add_argument("config", help="the config.yaml the runner wrote into the run's folder")
    args = parser.parse_args(argv)
    outcome = execute_config(args.config)
    print(json.dumps(vars(outcome)), file=sys.stdout, flush=True)
    return 0 if outcome.status in ("finished", "skipped") else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))

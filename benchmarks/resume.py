"""Runs that can stop at any moment and resume as if they never had.

:class:`ResumableRun` (a Lightning callback every CLI run gets) writes ``last.ckpt`` at the one point of a training
step where Lightning's resume is exact — ``on_train_batch_end``, after the optimiser step, where
``ModelCheckpoint(every_n_train_steps=...)`` saves too — when

* a stop was requested (SIGINT, SIGTERM, submitit's pre-emption signal: :mod:`benchmarks.interrupts`): it then
  raises :class:`~benchmarks.interrupts.RunInterrupted`, which the runner reports as *interrupted* (not failed);
* a checkpoint was requested (SIGTERM inside a submitit job), or ``run.checkpoint_every_n_steps`` steps or
  ``run.checkpoint_every_minutes`` minutes passed (so that a SIGKILL loses at most that much work).

* an epoch ended: the end-of-epoch ``last.ckpt`` is written after the first step of the next epoch.

Nothing is written after the last step of an epoch or a step that a validation follows: Lightning's resume from
there skips or misplaces that validation and the epoch-end logging (measured), so a stop requested there waits for
the next step (or the end of the run).
``ModelCheckpoint`` writes ``best.ckpt`` only.  Every checkpoint also holds what an exact continuation needs beyond
Lightning's own loop and optimiser state:

* the position in the epoch (the training loader is stateful: :class:`datamodules.loaders.InMemoryBatches`);
* the global RNG states (torch, CUDA, numpy, Python), restored before the first step after the resume;
* the running epoch aggregates of the training metrics (Lightning's ``self.log(..., on_epoch=True)`` sums and the
  module's torchmetrics states), added back when the resumed epoch logs them again, so the epoch's ``train/*``
  rows equal those of an uninterrupted run bit for bit;
* how many rows ``metrics.csv`` had: a resumed run first cuts the file back to those rows (rows logged after
  the checkpoint are logged again), so the CSV of an interrupted and resumed run equals the CSV of an
  uninterrupted one;
* how many times the run was resumed (the record's ``resumes``).

On a CPU (deterministic kernels) a run interrupted at any step and resumed gives the uninterrupted run's weights,
metrics and ``metrics.csv`` exactly (``tests/benchmarks/test_resume.py``).  On a GPU the same holds up to the
nondeterminism of its kernels.  With DDP (``trainer.devices > 1``) Lightning's own SIGTERM handling stays in place
(it stops every rank at the same step); there a signal stops at the next step without a fresh checkpoint, and the
periodic checkpoints bound the loss.
"""

from __future__ import annotations

import csv
import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from benchmarks import interrupts
from benchmarks.interrupts import ClaimLost, RunInterrupted
from benchmarks.store import atomic_file, atomic_write_bytes

__all__ = ["ResumableRun", "ResumableCSVLogger", "AtomicCheckpointIO", "checkpoint_problem", "LAST", "FINAL_CHECKPOINT"]

LAST = "last.ckpt"
#: The weights-only checkpoint of a finished run whose method deploys more than its student (``benchmarks.cli``).
FINAL_CHECKPOINT = "final.ckpt"


# ---------------------------------------------------------------------------------------------- checkpoint IO
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, then rename it into place.

    Lightning's own atomic save goes through a temporary file in the system temp folder and moves it, which is a
    copy (not atomic) when the store lies on another filesystem, and leaves the temporary file behind when the
    process is killed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a readable checkpoint (missing, truncated, not a checkpoint), or None.

    Cheap: a checkpoint written by ``torch.save`` is a zip archive whose directory sits at its end, so a truncated
    file fails to open at once; only files in the legacy (non-zip) format are loaded to be checked.
    """
    path = Path(path)
    if not path.is_file():
        return f"checkpoint {path} does not exist"
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"checkpoint {path} is corrupt ({error})"
        if not any(n.endswith("data.pkl") for n in names):
            return f"checkpoint {path} is a zip archive but not a torch checkpoint"
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure means unreadable
        kind = "truncated or corrupt" if size else "empty"
        return f"checkpoint {path} is {kind} ({size} bytes; {type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return None


# ------------------------------------------------------------------------------------------------------ CSV
class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it never deletes an existing ``metrics.csv``: it continues it (the
    header becomes its columns) and counts the rows, so a checkpoint can record how far the file was."""

    def __init__(self, log_dir: str) -> None:
        self.rows_written = 0
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.rows_written = sum(1 for _ in reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        return

    def save(self) -> None:
        pending = len(self.metrics)
        super().save()
        self.rows_written += pending

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` data rows (the header keeps every column it has)."""
        self.metrics = []
        if not os.path.isfile(self.metrics_file_path):
            self.rows_written = 0
            return
        with open(self.metrics_file_path, newline="") as handle:
            reader = csv.DictReader(handle)
            kept = [row for _, row in zip(range(rows), reader)]
            fieldnames = list(reader.fieldnames or [])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(self.metrics_file_path, buffer.getvalue().encode())
        self.metrics_keys = fieldnames
        self.rows_written = len(kept)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (see :class:`ResumableRun`).  ``fresh=True`` (a run
    that starts from scratch) removes the file a previous attempt left."""

    def __init__(self, *args: Any, fresh: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fresh:
            Path(self.log_dir, _ContinuingWriter.NAME_METRICS_FILE).unlink(missing_ok=True)

    @property
    def experiment(self) -> _ContinuingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- callback
def _metric_states(module: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The states of every torchmetrics metric in ``module`` (they are not in its state dict)."""
    from torchmetrics import Metric

    states: dict[str, dict[str, Any]] = {}
    for name, metric in module.named_modules():
        if isinstance(metric, Metric) and name:
            states[name] = {
                key: apply_to_collection(getattr(metric, key), torch.Tensor, _cpu_copy) for key in metric._defaults
            }
            states[name]["_update_count"] = metric._update_count
    return states


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().cpu()


def _restore_metric_states(module: torch.nn.Module, states: dict[str, dict[str, Any]]) -> None:
    from torchmetrics import Metric

    named = dict(module.named_modules())
    for name, state in states.items():
        metric = named.get(name)
        if not isinstance(metric, Metric):
            continue
        for key, value in state.items():
            if key == "_update_count":
                metric._update_count = int(value)
            else:  # a tensor or a list of tensors (torchmetrics allows no other state)
                setattr(metric, key, apply_to_collection(value, torch.Tensor, torch.Tensor.to, metric.device))
        metric._computed = None


def _rng_states() -> dict[str, Any]:
    """Lightning's RNG states in types ``torch.load(weights_only=True)`` accepts (LightningCLI reads checkpoints so)."""
    states = _collect_rng_states()
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)]
    version, state, gauss = states["python"]
    states["python"] = [version, list(state), gauss]
    return states


def _set_rng(states: dict[str, Any]) -> None:
    states = dict(states)
    if "numpy" in states:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss)
    version, state, gauss = states["python"]
    states["python"] = (version, tuple(state), gauss)
    _set_rng_states(states)


def _epoch_results(trainer: Any) -> Any:
    return trainer.fit_loop.epoch_loop._results


def _accumulators(trainer: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Lightning's running epoch aggregates of the values logged with ``on_epoch=True`` during training."""
    saved: dict[str, dict[str, torch.Tensor]] = {}
    for key, result in _epoch_results(trainer).items():
        if not getattr(result, "is_tensor", False) or not result.meta.on_epoch or result.has_reset:
            continue
        entry = {"value": result.value.detach().clone().cpu()}
        if result.meta.is_mean_reduction:
            entry["cumulated_batch_size"] = result.cumulated_batch_size.detach().clone().cpu()
        saved[key] = entry
    return saved


class ResumableRun(Callback):
    """Exact-resume checkpoints, stop requests, periodic checkpoints and the claim guard of one run.

    Args:
        checkpoint_dir: where ``last.ckpt`` goes (``<run dir>/checkpoints``).
        csv_logger: the run's :class:`ResumableCSVLogger` (its row count is saved, and restored on resume).
        claim: the store claim of the run (a lost claim stops the run without writing anything).
        every_n_steps: also write ``last.ckpt`` every this many optimiser steps (0: no).
        every_minutes: also write ``last.ckpt`` when this many minutes passed since the last one (0: no).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        csv_logger: ResumableCSVLogger | None = None,
        claim: Any = None,
        every_n_steps: int = 0,
        every_minutes: float = 0.0,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.csv_logger = csv_logger
        self.claim = claim
        self.every_n_steps = int(every_n_steps)
        self.every_minutes = float(every_minutes)
        self.resumes = 0
        self._trainer: Any = None
        self._last_save = time.monotonic()
        self._saved_epoch = 0
        self._pending_rng: dict[str, Any] | None = None
        self._pending_metrics: dict[str, dict[str, Any]] | None = None
        self._pending_sums: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / LAST

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = {"resumes": self.resumes, "rng": _rng_states()}
        if self.csv_logger is not None:
            self.csv_logger.save()  # everything logged so far is on disk: the checkpoint records how far
            state["csv_rows"] = self.csv_logger.experiment.rows_written
        if trainer is not None and trainer.training:
            state["metric_states"] = _metric_states(trainer.lightning_module)
            state["epoch_sums"] = _accumulators(trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumes = int(state_dict.get("resumes", 0)) + 1
        self._pending_rng = state_dict.get("rng")
        self._pending_metrics = state_dict.get("metric_states")
        self._pending_sums = dict(state_dict.get("epoch_sums") or {})
        rows = state_dict.get("csv_rows")
        if rows is not None and self.csv_logger is not None:
            self.csv_logger.experiment.truncate(int(rows))

    # ------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.world_size == 1:
            interrupts.reassert()  # ours over Lightning's SIGTERM handler (which stops without a checkpoint)
        self._last_save = time.monotonic()
        self._saved_epoch = trainer.current_epoch
        self._guard(trainer)
        stop = interrupts.requested()
        if stop is not None:
            raise RunInterrupted(stop, None)
        if self._pending_rng is not None:
            _set_rng(self._pending_rng)
            self._pending_rng = None
        if self._pending_metrics is not None:
            _restore_metric_states(pl_module, self._pending_metrics)
            self._pending_metrics = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending_sums:
            self._add_back_sums(trainer)
        self._guard(trainer)
        stop = interrupts.requested()
        # the end-of-epoch checkpoint is written at the first exact point of the next epoch
        due = stop is not None or interrupts.checkpoint_requested() or trainer.current_epoch > self._saved_epoch
        due = due or (self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0)
        due = due or (self.every_minutes > 0 and time.monotonic() - self._last_save >= 60.0 * self.every_minutes)
        if trainer.world_size > 1:
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if not due or not self._exact_here(trainer, batch_idx):
            return  # at the last step of an epoch or of the run: the stop waits for the next step
        trainer.save_checkpoint(self.last_path)
        self._last_save = time.monotonic()
        self._saved_epoch = trainer.current_epoch
        interrupts.clear_checkpoint_request()
        if stop is not None:
            raise RunInterrupted(stop, str(self.last_path))

    @staticmethod
    def _exact_here(trainer: Any, batch_idx: int) -> bool:
        """Whether a checkpoint written now resumes exactly: not after the last batch of an epoch, not before a
        validation (Lightning's resume from there skips or misplaces that validation and the epoch-end logging:
        measured), not after the run's last step."""
        if batch_idx + 1 >= trainer.num_training_batches:
            return False
        if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
            return False
        loop = trainer.fit_loop
        try:  # a validation due right after this step (step-based val_check_interval): same problem
            return not loop.epoch_loop._should_check_val_fx(loop._data_fetcher)
        except Exception:  # noqa: BLE001 - a Lightning without this private check: do not save mid-step at all
            return False

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._pending_sums = {}  # a new epoch: nothing of the interrupted one is left to add back

    def _add_back_sums(self, trainer: Any) -> None:
        """Continue the interrupted epoch's aggregates: the first value logged after the resume started a fresh
        sum (0 + x == x exactly), so ``saved + fresh`` is the very addition the uninterrupted run made."""
        results = _epoch_results(trainer)
        for key in list(self._pending_sums):
            result = results.get(key)
            if result is None or not getattr(result, "is_tensor", False):
                continue
            saved = self._pending_sums.pop(key)
            value = saved["value"].to(result.value.device, result.value.dtype)
            if result.meta.is_mean_reduction or result.meta.is_sum_reduction:
                result.value = value + result.value
            elif result.meta.is_max_reduction or result.meta.is_min_reduction:
                result.value = result.meta.reduce_fx(value, result.value)
            if "cumulated_batch_size" in saved and result.meta.is_mean_reduction:
                size = result.cumulated_batch_size
                result.cumulated_batch_size = saved["cumulated_batch_size"].to(size.device) + size

    def _guard(self, trainer: Any) -> None:
        if self.claim is not None and self.claim.lost:
            raise ClaimLost(
                f"run {self.claim.owner.run_id} was taken over by another runner (claim generation {self.claim.generation} "
                "is no longer the latest); stopping without writing anything"
            )

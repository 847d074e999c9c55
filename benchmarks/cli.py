"""Single runs through the Lightning CLI.

    python -m benchmarks.cli fit --config configs/recipes/crd_cifar100.yaml --config configs/methods/kd.yaml \\
        --model.student resnet8x4 --model.teacher.arch resnet32x4 --model.teacher.checkpoint <path>
    python -m benchmarks.cli fit --model KD --model.help          # typed, documented method arguments
    python -m benchmarks.cli fit --config ... --print_config      # a complete config that re-runs the same run

Method and data are selected in subclass mode (``--model KD``, ``--data CIFAR100``).  The ``run`` group carries
what is not a hyper-parameter: the output folder, names for W&B (table, pair, method, trial, recipe) and the
logging mode.  A finished ``fit`` writes ``<run.dir>/record.json`` (the result record the tables read) and
``<run.dir>/final.pth`` (the final student, loadable as a teacher).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from benchmarks.errors import user_errors
from benchmarks.progress import PROGRESS, StepProgress
from benchmarks.store import write_record
from benchmarks.wandb_logging import finish_wandb_run, lr_interval, wandb_config
from datamodules import KDDataModule
from datamodules.synthetic import is_generated
from kd_modules import DistillationModule
from kd_modules.base import TrainingDivergedError
from models.checkpoints import export_network

__all__ = ["RunInfo", "KDBenchCLI", "main"]


@dataclass
class RunInfo:
    """Bookkeeping of one run (none of it changes the result).

    Args:
        dir: output folder for checkpoints, logs and the result record (default: ``results/cli/<time>``).
        run_id: identity hash given by the table runner.
        name: display name (W&B run name).
        table: table the run belongs to (W&B group).
        pair: ``teacher->student`` label.
        method: method row label.
        trial: trial number.
        recipe: recipe name.
        preset: the runner's preset (smoke, full, cpu ...).
        tags: extra W&B tags.
        wandb: ``auto`` (online when WANDB_API_KEY is set, else offline), ``online``, ``offline`` or ``disabled``.
        wandb_project: W&B project.
        export_final: write ``final.pth`` (the student after the last epoch) when fit finishes.
        route: save the network after these fractions of the run's optimiser steps into ``route/`` (RCO's
            anchor points; the table runner sets it on the teacher runs an RCO run reads).
        cells: the table cells the run serves (``table``, ``row``, ``pair``, ``trial``), kept in its record so that
            tables find it again after a default changed its identity.
        on_divergence: what a non-finite validation loss does: ``fail`` the run (``failed.json``, the cell shows
            the failure), or ``record`` it (the record notes ``diverged`` and the table marks the cell; the smoke
            preset's choice, where a two-step teacher makes a divergence say nothing about the code). Either way
            training stops there, so the setting never changes what was trained.
    """

    dir: str | None = None
    run_id: str | None = None
    name: str | None = None
    table: str | None = None
    pair: str | None = None
    method: str | None = None
    trial: int | None = None
    recipe: str | None = None
    preset: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    wandb_project: str = "kdbench"
    export_final: bool = True
    route: list[float] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)
    on_divergence: Literal["fail", "record"] = "fail"


def wandb_mode(setting: str) -> str | None:
    """The W&B mode for a ``RunInfo.wandb`` setting: None when W&B is off."""
    if setting == "disabled":
        return None
    if setting == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return setting


def build_loggers(info: RunInfo, run_dir: Path, config: dict[str, Any] | None = None) -> list[Logger]:
    """CSV logs always; a W&B run (group = table, job type = method) unless ``run.wandb`` is ``disabled``."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    mode = wandb_mode(info.wandb)
    if mode is not None:
        tags = [t for t in (info.table, info.pair, info.method, info.recipe) if t] + list(info.tags)
        if info.trial is not None:
            tags.append(f"trial{info.trial}")
        loggers.append(
            WandbLogger(
                project=info.wandb_project,
                name=info.name or run_dir.name,
                group=info.table,
                job_type=info.method,
                tags=tags,
                save_dir=str(run_dir),
                offline=mode == "offline",
                id=info.run_id,
                config=wandb_config(info, config or {}),
            )
        )
    return loggers


#: Parsers built by :meth:`KDBenchCLI.setup_parser`, reused by every later run of the process.
_PARSERS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}


class KDBenchCLI(LightningCLI):
    """LightningCLI with kdbench's run bookkeeping, loggers, checkpoints and result record."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        self._fit_wall_start: float | None = None
        with warnings.catch_warnings():
            # Passing `args` from Python while sys.argv holds the runner's own arguments is intended here.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            self._init_cli(args, run, **kwargs)

    def _init_cli(self, args: Any, run: bool, **kwargs: Any) -> None:
        super().__init__(
            model_class=DistillationModule,
            datamodule_class=KDDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"num_sanity_val_steps": 0, "max_epochs": 240, "log_every_n_steps": 50},
            args=args,
            run=run,
            **kwargs,
        )

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Build the parser once per process and reuse it.

        Building it (signatures of every method, datamodule and Trainer argument) costs ~0.7 s, more than a
        smoke run's training; the table runner starts hundreds of runs in one process.  The parser holds no
        per-run state: parsing returns a new namespace, and the per-run instantiators are re-registered by
        LightningCLI on every run (keyed by class, so they replace the previous run's).
        """
        key = (type(self), add_subcommands, repr(main_kwargs), repr(subparser_kwargs))
        cached = _PARSERS.get(key)
        if cached is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            _PARSERS[key] = (
                self.parser,
                getattr(self, "_subcommand_method_arguments", None),
                getattr(self, "_subcommand_parsers", None),
            )
            return
        self.parser = cached[0]
        if add_subcommands:
            self._subcommand_method_arguments, self._subcommand_parsers = cached[1], cached[2]

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunInfo, "run", help="Bookkeeping of the run (never changes its result)")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    # ------------------------------------------------------------------------------------------ run folder
    def _run_info(self) -> RunInfo:
        config = self.config[self.subcommand] if self.subcommand else self.config
        value = config.get("run")
        if isinstance(value, RunInfo):
            return value
        return RunInfo(**(value.as_dict() if hasattr(value, "as_dict") else dict(value or {})))

    def _plain_config(self) -> dict[str, Any]:
        """The run's complete parsed config as plain data (what ``record.json`` keeps as YAML)."""
        import yaml

        config = self.config[self.subcommand] if self.subcommand else self.config
        parser = self._parser(self.subcommand) if self.subcommand else self.parser
        return yaml.safe_load(parser.dump(config, skip_none=False, format="yaml")) or {}

    def _run_dir(self) -> Path:
        info = self._run_info()
        if info.dir:
            return Path(info.dir)
        if not hasattr(self, "_default_dir"):
            self._default_dir = Path("results") / "cli" / time.strftime("%Y%m%d-%H%M%S")
        return self._default_dir

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer", {})
        run_dir = self._run_dir()
        info = self._run_info()
        extra_callbacks: list[Callback] = []
        if trainer_config.get("logger") in (None, True):
            plain = self._plain_config()
            kwargs["logger"] = build_loggers(info, run_dir, plain)
            extra_callbacks.append(LearningRateMonitor(logging_interval=lr_interval(plain)))
        extra_callbacks.append(StepProgress(run_dir / PROGRESS))
        if trainer_config.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        if trainer_config.get("enable_checkpointing", True) is not False:
            extra_callbacks.append(
                ModelCheckpoint(
                    dirpath=str(run_dir / "checkpoints"),
                    filename="best",
                    monitor="val/top1",
                    mode="max",
                    save_top_k=1,
                    save_last=True,
                    auto_insert_metric_name=False,
                )
            )
        if info.route:
            from kd_modules.rco import RouteSnapshots

            extra_callbacks.append(RouteSnapshots(info.route, run_dir))
        configured = trainer_config.get("callbacks") or []
        kwargs["callbacks"] = (list(configured) if isinstance(configured, list) else [configured]) + extra_callbacks
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------------------------------ record at the end
    def before_fit(self) -> None:
        self._fit_wall_start = time.perf_counter()
        # The student's weights before the first step (theta_0): KCD restarts its distillation run from exactly
        # these.  A resumed run keeps the file written by its first start.
        initial = self._run_dir() / "initial.pth"
        if self.trainer.global_rank == 0 and not initial.is_file():
            export_network(self.model.student, self.model.hparams["student"], initial, run_id=self._run_info().run_id)

    def fit(self, **kwargs: Any) -> None:
        """``trainer.fit``; with ``run.on_divergence: record`` a divergence ends the run with a record."""
        self._diverged = None
        try:
            self.trainer.fit(**kwargs)
        except TrainingDivergedError as error:
            if self._run_info().on_divergence != "record":
                raise
            self._diverged = str(error)

    def after_fit(self) -> None:
        trainer = self.trainer
        diverged = getattr(self, "_diverged", None)
        if (trainer.interrupted and not diverged) or trainer.global_rank != 0:
            return
        module = self.model
        info = self._run_info()
        run_dir = self._run_dir()
        config = self.config[self.subcommand]
        if info.export_final:
            export_network(
                module.student,
                module.hparams["student"],
                run_dir / "final.pth",
                top1=module.tracked.get("last_top1"),
                run_id=info.run_id,
            )
        seconds = module.fit_seconds()
        write_record(
            run_dir,
            run_id=info.run_id,
            info=info,
            config=self._parser(self.subcommand).dump(config, skip_none=False, format="yaml"),
            tracked=module.tracked,
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            fit_seconds=seconds,
            fast_dev_run=bool(trainer.fast_dev_run),
            limited=_is_limited(trainer) or is_generated(getattr(self.datamodule, "root", None)),
            diverged=diverged,
        )
        # One W&B run per process run: its summary, then close it so that the next in-process run starts its own.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                finish_wandb_run(logger.experiment, module.tracked, seconds, trainer, run_dir, diverged)


def _is_limited(trainer: Any) -> bool:
    """Whether the run saw less than the full data (limit_*_batches), i.e. a smoke run."""
    limits = (trainer.limit_train_batches, trainer.limit_val_batches)
    return any(isinstance(v, int) or (isinstance(v, float) and v < 1.0) for v in limits)


def main(args: list[str] | None = None) -> None:
    with user_errors():
        KDBenchCLI(args=args)


if __name__ == "__main__":
    main()

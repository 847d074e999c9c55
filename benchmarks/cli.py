"""Single runs through the Lightning CLI.

    python -m benchmarks.cli fit --config configs/recipes/crd_cifar100.yaml --config configs/methods/kd.yaml \\
        --model.student resnet8x4 --model.teacher.arch resnet32x4 --model.teacher.checkpoint <path>
    python -m benchmarks.cli fit --model KD --model.help          # typed, documented method arguments
    python -m benchmarks.cli fit --config ... --print_config      # a complete config that re-runs the same run

Method and data are selected in subclass mode (``--model KD``, ``--data CIFAR100``).  The ``run`` group carries
what is not a hyper-parameter: the output folder, names for W&B (table, pair, method, trial, recipe) and the
logging mode.  A finished ``fit`` writes ``<run.dir>/record.json`` (the result record the tables read) and
``<run.dir>/final.pth`` (the final student, loadable as a teacher).

Stopping and resuming: Ctrl-C (SIGINT) or SIGTERM saves ``<run.dir>/checkpoints/last.ckpt`` after the current
optimiser step and exits with status 130 / 143; ``--ckpt_path <run.dir>/checkpoints/last.ckpt`` continues the run
exactly where it stopped (:mod:`benchmarks.resume`), and ``metrics.csv`` / the W&B run continue too.

Bad input (an unknown method or key, a YAML error, lr <= 0, a zero-length run, a missing dataset, an unwritable
run folder, online W&B without credentials, a truncated checkpoint) is one line naming the value and the valid
choices, exit status 2, before anything is loaded or written (:mod:`benchmarks.cli_errors`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger, WandbLogger

from benchmarks import interrupts
from benchmarks.cli_errors import KDBenchArgumentParser, check_ckpt_path, check_config, check_config_files
from benchmarks.errors import user_errors
from benchmarks.interrupts import ClaimLost
from benchmarks.progress import PROGRESS, StepProgress
from benchmarks.resume import FINAL_CHECKPOINT, AtomicCheckpointIO, ResumableCSVLogger, ResumableRun
from benchmarks.store import write_record
from benchmarks.wandb_logging import finish_wandb_run, lr_interval, wandb_config
from datamodules import KDDataModule
from datamodules.synthetic import is_generated
from kd_modules import DistillationModule
from kd_modules.base import TrainingDivergedError
from kd_modules.numerics import Numerics
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
        checkpoint_every_n_steps: also write a resumable ``last.ckpt`` every this many optimiser steps (0: only
            at epoch ends, on a stop request, and every ``checkpoint_every_minutes``).
        checkpoint_every_minutes: also write a resumable ``last.ckpt`` when this many minutes passed since the
            last one (0: never), so that a SIGKILL or a node failure loses at most that much training.
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
    checkpoint_every_n_steps: int = 0
    checkpoint_every_minutes: float = 30.0
    on_divergence: Literal["fail", "record"] = "fail"


def build_loggers(
    info: RunInfo, run_dir: Path, config: dict[str, Any] | None = None, fresh: bool = True
) -> list[Logger]:
    """CSV logs always (continued, not rewritten, when the run resumes: ``fresh=False``); a W&B run (group = table,
    job type = method; the same run id, resumed) unless ``run.wandb`` is ``disabled``."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=str(run_dir), name="csv", version="", fresh=fresh)]
    if info.wandb != "disabled":
        # ``auto``: online when WANDB_API_KEY is set, else offline
        offline = info.wandb == "offline" or (info.wandb == "auto" and not os.environ.get("WANDB_API_KEY"))
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
                offline=offline,
                id=info.run_id,
                resume="allow",  # a resumed run continues its W&B run (online; offline runs sync into one)
                config=wandb_config(info, config or {}),
            )
        )
    return loggers


#: Parsers built by :meth:`KDBenchCLI.setup_parser`, reused by every later run of the process.
_PARSERS: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}


class KDBenchCLI(LightningCLI):
    """LightningCLI with kdbench's run bookkeeping, loggers, checkpoints and result record."""

    def __init__(self, args: Any = None, run: bool = True, claim: Any = None, **kwargs: Any) -> None:
        self._claim = claim  # the store claim of the run (benchmarks.store.Claim), when the runner started it
        self._resumable: ResumableRun | None = None
        check_config_files(args)  # YAML errors name the file and line, before jsonargparse reads them
        with warnings.catch_warnings():
            # Passing `args` from Python while sys.argv holds the runner's own arguments is intended here.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().__init__(
                model_class=DistillationModule,
                datamodule_class=KDDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                parser_class=KDBenchArgumentParser,  # errors: one line naming the bad value and the valid choices
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
        if key not in _PARSERS:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
            _PARSERS[key] = (
                self.parser,
                getattr(self, "_subcommand_method_arguments", None),
                getattr(self, "_subcommand_parsers", None),
            )
        self.parser, methods, parsers = _PARSERS[key]
        if add_subcommands:
            self._subcommand_method_arguments, self._subcommand_parsers = methods, parsers

    def _parse_ckpt_path(self) -> None:
        """A truncated or corrupt ``--ckpt_path`` is one line saying so (LightningCLI loads it right here)."""
        subcommand = self.config.get("subcommand")
        check_ckpt_path(self.config[subcommand].get("ckpt_path") if subcommand else None)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Refuse what would fail later (or silently do nothing) before anything is loaded or written."""
        if self.subcommand:
            check_config(self.config[self.subcommand], self.subcommand)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunInfo, "run", help="Bookkeeping of the run (never changes its result)")
        parser.add_class_arguments(
            Numerics, "numerics", help="Layout, compilation and teacher-output cache (bf16: --trainer.precision)"
        )
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        numerics = self._group("numerics", Numerics)
        if not numerics.is_reference:
            self.model.configure_numerics(numerics)

    @property
    def _config(self) -> Any:
        """The parsed config of the subcommand being run."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def _group(self, name: str, cls: type) -> Any:
        """The parsed ``name`` group (``run``, ``numerics``) as a ``cls``."""
        value = self._config.get(name)
        if isinstance(value, cls):
            return value
        return cls(**(value.as_dict() if hasattr(value, "as_dict") else dict(value or {})))

    # ------------------------------------------------------------------------------------------ run folder
    def _run_info(self) -> RunInfo:
        return self._group("run", RunInfo)

    def _plain_config(self) -> dict[str, Any]:
        """The run's complete parsed config as plain data (what ``record.json`` keeps as YAML)."""
        import yaml

        parser = self._parser(self.subcommand) if self.subcommand else self.parser
        return yaml.safe_load(parser.dump(self._config, skip_none=False, format="yaml")) or {}

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
        resuming = bool(self._config.get("ckpt_path"))
        csv_logger: ResumableCSVLogger | None = None
        if trainer_config.get("logger") in (None, True):
            plain = self._plain_config()
            kwargs["logger"] = build_loggers(info, run_dir, plain, fresh=not resuming)
            csv_logger = next((lg for lg in kwargs["logger"] if isinstance(lg, ResumableCSVLogger)), None)
            extra_callbacks.append(LearningRateMonitor(logging_interval=lr_interval(plain)))
        if trainer_config.get("plugins") is None:
            plugins: list[Any] = [AtomicCheckpointIO()]
            from lightning.fabric.plugins.environments import SLURMEnvironment

            if SLURMEnvironment.detect():
                # submitit owns pre-emption and requeueing (benchmarks.launch.SubmititRun); Lightning's own
                # SLURM requeue (SIGUSR1 -> scontrol requeue) would requeue a second time.
                plugins.append(SLURMEnvironment(auto_requeue=False))
            kwargs["plugins"] = plugins
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
                    save_last=False,  # last.ckpt is benchmarks.resume.ResumableRun's (exact resume points only)
                    auto_insert_metric_name=False,
                )
            )
            self._resumable = ResumableRun(
                run_dir / "checkpoints",
                csv_logger=csv_logger,
                claim=self._claim,
                every_n_steps=info.checkpoint_every_n_steps,
                every_minutes=info.checkpoint_every_minutes,
            )
            extra_callbacks.append(self._resumable)
        if info.route:
            from kd_modules.rco import RouteSnapshots

            extra_callbacks.append(RouteSnapshots(info.route, run_dir))
        configured = trainer_config.get("callbacks") or []
        kwargs["callbacks"] = (list(configured) if isinstance(configured, list) else [configured]) + extra_callbacks
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------------------------------ record at the end
    def before_fit(self) -> None:
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
        if self._claim is not None and not self._claim.check():
            raise ClaimLost(f"run {info.run_id} was taken over by another runner before its record was written")
        if info.export_final:
            export_network(
                module.student,
                module.hparams["student"],
                run_dir / "final.pth",
                top1=module.tracked.get("last_top1"),
                run_id=info.run_id,
            )
            if type(module).deploy_student is not DistillationModule.deploy_student:
                # A method that deploys more than its student (SimKD's projector): its final weights for
                # ``benchmarks.export`` (last.ckpt is a resume point only and is never written after the last step).
                trainer.save_checkpoint(run_dir / "checkpoints" / FINAL_CHECKPOINT, weights_only=True)
        seconds = module.fit_seconds()
        write_record(
            run_dir,
            run_id=info.run_id,
            info=info,
            config=self._parser(self.subcommand).dump(config, skip_none=False, format="yaml"),
            tracked={**module.tracked, "extra_parameters": module.extra_parameters()},
            epochs=trainer.current_epoch,
            steps=trainer.global_step,
            fit_seconds=seconds,
            fast_dev_run=bool(trainer.fast_dev_run),
            limited=_is_limited(trainer) or is_generated(getattr(self.datamodule, "root", None)),
            resumes=self._resumable.resumes if self._resumable is not None else 0,
            provenance=self._provenance(config),
            diverged=diverged,
        )
        # One W&B run per process run: its summary, then close it so that the next in-process run starts its own.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                finish_wandb_run(logger.experiment, module.tracked, seconds, trainer, run_dir, diverged)

    def _provenance(self, config: Any) -> dict[str, Any]:
        from benchmarks.provenance import code_state, teacher_digest

        checkpoint = config.get("model.init_args.teacher.checkpoint")  # a TeacherConfig group, or no teacher
        describe = getattr(self.datamodule, "data_provenance", None)
        return {
            "code": code_state(),
            "teacher": {"checkpoint": checkpoint, "digest": teacher_digest(checkpoint)} if checkpoint else None,
            "data": describe() if callable(describe) else None,
        }


def close_wandb(status: str) -> None:
    """Finish the W&B run a fit left open (interrupted or failed: ``after_fit`` finishes only finished ones).

    Otherwise the next run in this process would log into it: WandbLogger reuses an active run.  An interrupted
    run is marked as pre-empted first, which is what W&B expects of a run that will be resumed (same id).
    """
    run = getattr(sys.modules.get("wandb"), "run", None)
    if run is None:
        return
    if status == "interrupted":
        with contextlib.suppress(Exception):  # offline runs cannot be marked; resuming them works all the same
            run.mark_preempting()
    with contextlib.suppress(Exception):  # logging must never turn an outcome into another one
        run.finish(exit_code=0 if status in ("finished", "interrupted") else 1)


def _is_limited(trainer: Any) -> bool:
    """Whether the run saw less than the full data (limit_*_batches), i.e. a smoke run."""
    limits = (trainer.limit_train_batches, trainer.limit_val_batches)
    return any(isinstance(v, int) or (isinstance(v, float) and v < 1.0) for v in limits)


def main(args: list[str] | None = None) -> None:
    """``python -m benchmarks.cli``: exit 130 / 143 after saving a checkpoint when interrupted."""
    from benchmarks.interrupts import RunInterrupted

    with user_errors(), interrupts.installed():
        try:
            KDBenchCLI(args=args)
        except RunInterrupted as stop:
            close_wandb("interrupted")
            where = f"; resume with --ckpt_path {stop.checkpoint}" if stop.checkpoint else ""
            print(f"interrupted by {interrupts.signal_name(stop.signum)}{where}", file=sys.stderr)
            sys.exit(interrupts.exit_status(stop.signum))


if __name__ == "__main__":
    main()

"""Diagnostic rows: runs that train nothing, measure networks that other runs trained, and record the measurements.

The papers' analysis tables print measurements of trained networks instead of accuracies: KCD Table 10 (how many
of the most activated channels a student shares with its teacher), KCD Table 11 (KL divergence and L2 distance
between teacher and student features on the evaluation set), letKD supplement Table 4 (the top-1 of an LDA
classifier fitted on a student's pooled intermediate features).  Each is a class here.  A diagnostic is planned
like a method: the network it measures is a *prerequisite* training run (``measured: {trained_method,
trained_config, trained_args}`` describe it; identical settings give the identical run, so the analysed
student is the very run of the table that trained it), its identity names that run, and its output is an ordinary
``record.json`` whose ``metrics`` hold the measurements (:data:`benchmarks.tables.ANALYSIS_METRICS`), which the
renderer reads like accuracies.

It is a fit without steps: the measurement happens in ``on_train_start`` on the training device, then the fit
stops before its first batch (no optimiser, no validation).  ``final.pth`` of a diagnostic run is the measured
network itself.

Settings the papers leave open are arguments, documented where they are defined; the table notes say which were
chosen.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_modules.base import Batch, DistillationModule, MethodConfigError, OptimConfig, SettingsGroup, TeacherConfig
from kd_modules.losses.kcd import channel_mapping, identity_mapping, statistic_groups, transform_channels
from kd_modules.offline import normalised_train_batches, progress
from kd_modules.rco import check_layer, distilled_map, distilled_shape, vanilla_stage
from models import KDNet, create_model
from models.checkpoints import CheckpointError, load_network, read_state_dict

__all__ = [
    "Diagnostic",
    "ChannelOverlap",
    "OutputConsistency",
    "LDAProbe",
    "top_k_overlap",
    "class_channel_means",
    "feature_kl",
    "map_l2_distance",
    "load_with_kd_layers",
]

warnings.filterwarnings("ignore", message=r".*configure_optimizers` returned `None`")

Comparison = Literal["teacher", "transformed_teacher", "student"]
Mapping = Literal["identity", "bipartite", "greedy"]


# ------------------------------------------------------------------------------------------------ measurements
def top_k_overlap(first: Tensor, second: Tensor, k: int) -> Tensor:
    """Mean over rows of ``|top-k(first_i) ∩ top-k(second_i)| / k`` (KCD Sec. 5.1), in percent.

    ``first`` and ``second`` are (classes, C): per class, the mean activation of each channel.  Rows with a NaN
    (classes without images) are left out.  ``k`` larger than C is clamped to C (every channel is then shared).
    """
    if first.shape != second.shape:
        raise MethodConfigError(
            f"top-k overlap compares equal shapes, got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    keep = ~(first.isnan().any(1) | second.isnan().any(1))
    first, second = first[keep], second[keep]
    k = min(k, first.shape[1])
    a = torch.zeros_like(first, dtype=torch.bool).scatter_(1, first.topk(k, dim=1).indices, True)
    b = torch.zeros_like(second, dtype=torch.bool).scatter_(1, second.topk(k, dim=1).indices, True)
    return 100.0 * (a & b).sum(1).double().mean() / k


def class_channel_means(pooled: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums of pooled activations (classes, C) in float64 and the per-class image counts."""
    sums = torch.zeros(num_classes, pooled.shape[1], dtype=torch.float64, device=pooled.device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=pooled.device)
    sums.index_add_(0, labels, pooled.double())
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    return sums, counts


def feature_kl(teacher: Tensor, student: Tensor) -> Tensor:
    """Per-row ``KL(softmax(teacher) || softmax(student))`` of (B, D) vectors (natural log)."""
    log_p = F.log_softmax(teacher.double(), dim=1)
    log_q = F.log_softmax(student.double(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def map_l2_distance(teacher: Tensor, student: Tensor) -> Tensor:
    """Per-image Euclidean distance ``||teacher - student||_2`` over every element of (B, ...) tensors."""
    return (teacher.double() - student.double()).flatten(1).norm(dim=1)


# ----------------------------------------------------------------------------------------------- loading
def load_with_kd_layers(arch: str, num_classes: int, path: str) -> KDNet:
    """A trained student with the letKD KD layers it was exported with (``inserted.<point>.*`` keys), rebuilt.

    letKD students keep their KD layers (:class:`kd_modules.letkd.KDLayer`) at inference: each layer's width and
    word count are read from its scoring convolution's weight, its residual scale ``alpha`` from its buffer.  A plain
    network loads as :func:`models.checkpoints.load_network` loads it.
    """
    state, saved_arch = read_state_dict(path)
    inserted = sorted({key.split(".")[1] for key in state if key.startswith("inserted.")})
    if not inserted:
        return load_network(arch, num_classes, path)
    from kd_modules.letkd import KDLayer

    if saved_arch is not None and saved_arch != arch:
        raise CheckpointError(f"checkpoint {path} holds a {saved_arch}, not {arch}")
    network = create_model(arch, num_classes)
    for key in inserted:
        weight = state.get(f"inserted.{key}.predictor.weight")
        if weight is None:
            raise CheckpointError(f"checkpoint {path}: the module inserted at {key} is not a letKD KD layer")
        point = key if key == "neck" else key.replace("_", ".", 1)
        network.insert(point, KDLayer(int(weight.shape[1]), int(weight.shape[0]), alpha=0.0))
    network.load_state_dict(state)
    return network


# ------------------------------------------------------------------------------------------------ the base
@dataclass(frozen=True)
class MeasuredRun(SettingsGroup):
    """The training run whose network a diagnostic measures (``measured: {...}``); the same settings as a table
    row's give the same run, so the measured network is the one the other tables train.

    Args:
        trained_method: the method of the run that trained the measured network.
        trained_config: that run's method config file (as a table row's ``config``).
        trained_args: that run's method arguments (as a table row's ``init_args``).
    """

    trained_method: str = "Vanilla"
    trained_config: str | None = None
    trained_args: dict[str, Any] | None = None


class Diagnostic(DistillationModule):
    """A run that measures a trained network and records the measurements (see the module docs).

    Args:
        student: network name of the measured network.
        teacher: the teacher (diagnostics that compare with it).
        num_classes: classifier width (linked from the data).
        optim: unused (nothing is optimised); present so that recipes apply unchanged.
        checkpoint: the measured network's weights (filled in by the table runner: the ``trained`` stage's
            ``final.pth``).
        measured: the training run of the measured network (:class:`MeasuredRun`).
        max_images: use only the first n images of every pass (None: all; smoke runs use a few).
    """

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig | None = None,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        checkpoint: str | None = None,
        measured: MeasuredRun = MeasuredRun(),
        max_images: int | None = None,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, teacher=teacher, optim=optim)
        if checkpoint is None:
            raise MethodConfigError(
                f"{type(self).__name__} measures a trained network: pass checkpoint (the table runner passes the "
                f"final.pth of the {measured.trained_method} run it names)"
            )
        if max_images is not None and max_images < 1:
            raise MethodConfigError(f"max_images must be at least 1 or null (all images), got {max_images}")
        self.student = self.load_measured(student, num_classes, checkpoint)
        self.measurements: dict[str, float] = {}

    @classmethod
    def trained_stage(cls, init_args: dict[str, Any], name: str = "trained", pass_as: str = "checkpoint") -> dict:
        """The prerequisite that trains the measured network (the row's ``measured`` settings)."""
        given = init_args.get("measured") or {}
        measured = asdict(given) if is_dataclass(given) else dict(given)
        method = str(measured.get("trained_method") or "Vanilla")
        stage: dict[str, Any] = {
            "name": name,
            "method": method,
            "init_args": dict(measured.get("trained_args") or {}),
            "pass_as": pass_as,
            "description": f"the measured network: the {method} run of this pair and trial",
        }
        if measured.get("trained_config"):
            stage["config"] = str(measured["trained_config"])
        return stage

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        return [cls.trained_stage(init_args)]

    def load_measured(self, arch: str, num_classes: int, path: str) -> KDNet:
        return load_network(arch, num_classes, path)

    # ------------------------------------------------------------------------------------------ the pass
    def batches(self, split: Literal["train", "eval"]) -> Iterator[Batch]:
        """Normalised batches on the module's device: the un-augmented training split or the evaluation split."""
        datamodule = self.trainer.datamodule
        loader = datamodule.train_eval_dataloader() if split == "train" else datamodule.val_dataloader()
        batches, total = normalised_train_batches(datamodule, self.device, self.max_images, loader)
        yield from progress(batches, total, f"{type(self).__name__} {split} pass")

    @abstractmethod
    def measure(self) -> dict[str, float]:
        """The measurements (record metric name -> value); runs in eval and inference mode on the device."""

    def on_train_start(self) -> None:
        for network in self.children():
            network.eval()
        with torch.inference_mode():
            self.measurements = {k: float(v) for k, v in self.measure().items()}
        self.tracked.update(self.measurements)
        self.trainer.should_stop = True  # nothing to train: the fit ends before its first step

    def training_losses(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        raise MethodConfigError(f"{type(self).__name__} is a diagnostic: it measures, it does not train")

    def configure_optimizers(self) -> Any:
        return None

    def extra_parameters(self) -> int:
        """0: a diagnostic trains nothing (its second networks, S2 or theta_1, are measured, not trained)."""
        return 0


# --------------------------------------------------------------------------------------- KCD Table 10
class ChannelOverlap(Diagnostic):
    """KCD Table 10: the share of the k most activated channels of each class that two networks have in common.

    Over the un-augmented training split, each network's map at ``layer`` is global-average-pooled and averaged per
    class; per class the top-k channel indices of both are intersected, and the ratio ``|∩| / k`` is averaged over
    the classes (:func:`top_k_overlap`, percent), for each k in ``ks`` (recorded as ``overlap_top<k>``).

    The measured network is the trained student S (``checkpoint``); it is compared with

    * ``teacher``: the teacher T in the default channel order of plain distillation (student channel i <- teacher
      channel i, :func:`kd_modules.losses.kcd.identity_mapping`: the first c_S teacher channels) — "S vs T";
    * ``transformed_teacher``: T under KCD's transformation (``mapping``, default the bipartite matching of the
      ``consistency`` matrix), computed here as KCD computes it from S and T over the training split — "S vs T(T)";
    * ``student``: another student of the same architecture trained from another initialisation
      (``reference_checkpoint``: the Vanilla run with seed ``second_seed``) — "S1 vs S2".

    Args (beyond :class:`Diagnostic`'s):
        compare: ``teacher``, ``transformed_teacher`` or ``student`` (above).
        ks: the k of the top-k sets (KCD: 10, 20, 50, 100); k above the channel count counts every channel.
        layer: the compared map (:data:`kd_modules.rco.LAYER_HELP`).  KCD does not say which; default
            ``final_map`` (the map entering pooling: 1280 channels on MobileNetV2, 2048 on ResNet50), because the
            paper's 34% top-100 "S vs T" overlap cannot occur on MobileNetV2-0.5x's last stage (160 channels: two
            100-channel sets share at least 40).  ``last`` is the layer kdbench's KCD distils.
        mapping: the transformation for ``transformed_teacher`` (``bipartite``: KCD's; ``greedy``).
        consistency: the consistency metric of that transformation (KCD's best: ``correlation``).
        reference_checkpoint: the second student (filled in by the table runner for ``compare=student``).
        second_seed: the seed of the second student's Vanilla run (``compare=student``).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig | None = None,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        checkpoint: str | None = None,
        measured: MeasuredRun = MeasuredRun(),
        max_images: int | None = None,
        compare: Comparison = "teacher",
        ks: list[int] = [10, 20, 50, 100],  # noqa: B006 - plain data, never mutated
        layer: str = "final_map",
        mapping: Mapping = "bipartite",
        consistency: str = "correlation",
        reference_checkpoint: str | None = None,
        second_seed: int = 1,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, checkpoint, measured, max_images)
        if compare not in ("teacher", "transformed_teacher", "student"):
            raise MethodConfigError(f"compare={compare!r}; valid: teacher, transformed_teacher, student")
        if not ks or any(k < 1 for k in ks):
            raise MethodConfigError(f"ks={ks!r} must be a non-empty list of positive integers")
        for network in (self.student, self.teacher):
            check_layer(network, layer, False)
        self.ks = list(ks)
        self.reference: KDNet | None = None
        if compare == "student":
            if reference_checkpoint is None:
                raise MethodConfigError("compare=student needs reference_checkpoint (the second student's final.pth)")
            if reference_checkpoint == checkpoint:
                raise MethodConfigError("compare=student compares two different students: second_seed must differ")
            self.reference = load_network(student, num_classes, reference_checkpoint)

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        stages = [cls.trained_stage(init_args)]
        if init_args.get("compare") == "student":
            seed = int(init_args.get("second_seed", 1))
            description = "S2: the same student trained with CE from another initialisation"
            stages.append(vanilla_stage("second_student", "reference_checkpoint", description, seed=seed))
        return stages

    def measure(self) -> dict[str, float]:
        mapping = teacher_mapping(self, self.student if self.compare == "transformed_teacher" else None)
        other = self.reference if self.reference is not None else self.teacher
        sums = counts = 0
        for batch in self.batches("train"):
            images, labels = batch["images"], batch["labels"]
            s = distilled_map(self.student.forward_features(images), self.layer, False).float().mean((2, 3))
            o = distilled_map(other.forward_features(images), self.layer, False).float().mean((2, 3))
            if other is self.teacher:
                o = o.index_select(1, mapping)
            # Both have the student's width: their per-class sums side by side, [student | other].
            batch_sums, batch_counts = class_channel_means(
                torch.cat([s, o], 1), labels, int(self.hparams["num_classes"])
            )
            sums = sums + batch_sums
            counts = counts + batch_counts
        student_means, other_means = (sums / counts[:, None]).chunk(2, dim=1)  # NaN rows: classes without images
        return {f"overlap_top{k}": float(top_k_overlap(other_means, student_means, k)) for k in self.ks}


def teacher_mapping(module: ChannelOverlap | OutputConsistency, student: KDNet | None) -> Tensor:
    """The channel mapping of the teacher onto the measured student at ``module.layer``, on the module's device:
    the identity without ``student``, else KCD's (``module.mapping``, ``module.consistency``) from one pass of
    ``student`` and the teacher over the training split."""
    from kd_modules.kcd import consistency_statistics

    shape = tuple(distilled_shape(network, module.layer).channels for network in (module.teacher, module.student))
    if student is None:
        return identity_mapping(*shape).to(module.device)
    groups = statistic_groups([module.consistency], "sum")
    stats = consistency_statistics(
        module.teacher,
        student,
        module.batches("train"),
        None,
        layer=module.layer,
        pre_activation=False,
        groups=groups,
        partitions=1,
        num_classes=int(module.hparams["num_classes"]),
        eps=1e-8,
    )
    return channel_mapping(module.mapping, stats.matrix(module.consistency, "sum")[0], shape).to(module.device)


# --------------------------------------------------------------------------------------- KCD Table 11
class OutputConsistency(Diagnostic):
    """KCD Table 11: how close a trained student's features are to the teacher's, on the evaluation split.

    For every evaluation image, with ``F_T`` and ``F_S`` the two networks' maps at ``layer`` and ``pi`` the channel
    mapping (``identity`` for plain distillation; ``bipartite``: KCD's transformation, computed here as KCD computes
    it, from the CE-only student theta_1 (``mapping_checkpoint``) and the teacher over the training split):

    * ``kl_div`` = ``KL(softmax(A(pi(F_T))) || softmax(A(F_S)))`` over channels of the pooled maps
      (``kl_input=features``), or over the classes of the logits (``kl_input=logits``; the mapping plays no part);
    * ``l2_dist`` = ``||pi(F_T) - F_S||_2`` over the whole map (the teacher map average-pooled to the student's
      spatial size when they differ),

    each averaged over the images.  KCD released no code and does not define either beyond "KL divergence and L2
    distance between the teacher and student feature map"; the defaults are the reading under which the paper's
    second row (a transformation alone, "before training") can change the KL: features, not logits.

    Args (beyond :class:`Diagnostic`'s):
        mapping: ``identity`` or ``bipartite`` (``greedy`` also accepted).
        consistency: the consistency metric of the transformation (``correlation``, KCD's).
        layer: the compared map (default ``final_map``, as :class:`ChannelOverlap`).
        kl_input: ``features`` (default) or ``logits``.
        mapping_checkpoint: theta_1 for the transformation (filled in by the table runner: the CE-only student).
    """

    requires_teacher = True
    teacher: KDNet  # loaded by the base module (requires_teacher)

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig | None = None,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        checkpoint: str | None = None,
        measured: MeasuredRun = MeasuredRun(),
        max_images: int | None = None,
        mapping: Literal["identity", "bipartite", "greedy"] = "identity",
        consistency: str = "correlation",
        layer: str = "final_map",
        kl_input: Literal["features", "logits"] = "features",
        mapping_checkpoint: str | None = None,
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, checkpoint, measured, max_images)
        for network in (self.student, self.teacher):
            check_layer(network, layer, False)
        self.mapping_student: KDNet | None = None
        if mapping != "identity":
            if mapping_checkpoint is None:
                raise MethodConfigError(f"mapping={mapping} needs mapping_checkpoint (theta_1, the CE-only student)")
            self.mapping_student = load_network(student, num_classes, mapping_checkpoint)

    @classmethod
    def prerequisites(cls, init_args: dict[str, Any]) -> list[dict[str, Any]]:
        stages = [cls.trained_stage(init_args)]
        if init_args.get("mapping", "identity") != "identity":
            description = "theta_1, the CE-only student KCD's transformation is computed with"
            stages.append(vanilla_stage("theta_1", "mapping_checkpoint", description))
        return stages

    def measure(self) -> dict[str, float]:
        mapping = teacher_mapping(self, self.mapping_student)
        kl_sum = l2_sum = 0.0
        count = 0
        for batch in self.batches("eval"):
            images = batch["images"]
            t_out, s_out = self.teacher.forward_features(images), self.student.forward_features(images)
            t = distilled_map(t_out, self.layer, False).float()
            s = distilled_map(s_out, self.layer, False).float()
            if t.shape[-2:] != s.shape[-2:]:
                t = F.adaptive_avg_pool2d(t, s.shape[-2:])
            t = transform_channels(t, mapping)
            if self.kl_input == "features":
                kl = feature_kl(t.mean((2, 3)), s.mean((2, 3)))
            else:
                kl = feature_kl(t_out.logits.float(), s_out.logits.float())
            kl_sum += float(kl.sum())
            l2_sum += float(map_l2_distance(t, s).sum())
            count += images.shape[0]
        return {"kl_div": kl_sum / count, "l2_dist": l2_sum / count}


# ------------------------------------------------------------------------------------- letKD supp. Table 4
class LDAProbe(Diagnostic):
    """letKD supplement Table 4: the top-1 of a linear (LDA) classifier on a student's pooled intermediate features.

    The student (with its letKD KD layers, :func:`load_with_kd_layers`) runs over the un-augmented training split;
    the features at ``point`` — the input ``x`` or the output ``x_hat`` of the KD layer inserted there
    (``features``; a point without a KD layer has ``x = x_hat``) — are global-average-pooled, an LDA classifier
    (scikit-learn's ``LinearDiscriminantAnalysis``, ``solver``) is fitted on them, and its top-1 on the same
    features of the evaluation split is ``lda_top1`` (percent).  letKD's supplement says only "global average pooling
    to the extracted intermediate features of the trained student and fit a linear classifier using LDA"; fitting
    on the training split and scoring on the evaluation split are our choice (the official code has no probe).

    Args (beyond :class:`Diagnostic`'s):
        point: the insertion point (``stage3.0``: letKD-2's intermediate KD layer on a CIFAR ResNet20; null: the
            first block of the last stage, where letKD-2 puts it).
        features: ``input`` (x) or ``output`` (x_hat).
        solver: the LDA solver (``svd``, scikit-learn's default; ``lsqr`` / ``eigen``).
    """

    requires_teacher = False

    def __init__(
        self,
        student: str,
        teacher: TeacherConfig | None = None,
        num_classes: int = 100,
        optim: OptimConfig = OptimConfig(),
        checkpoint: str | None = None,
        measured: MeasuredRun = MeasuredRun(),
        max_images: int | None = None,
        point: str | None = None,
        features: Literal["input", "output"] = "output",
        solver: Literal["svd", "lsqr", "eigen"] = "svd",
    ) -> None:
        super().__init__(student, teacher, num_classes, optim, checkpoint, measured, max_images)
        from kd_modules.letkd import FeatureTap, first_block_of_last_stage

        self.point = point or first_block_of_last_stage(self.student)
        if self.point not in self.student.insertion_points():
            raise MethodConfigError(
                f"point {self.point!r} is not an insertion point of {student}; valid: {self.student.insertion_points()}"
            )
        key = self.point.replace(".", "_")
        inserted = getattr(self.student, "inserted", None)
        self.layer: nn.Module
        if inserted is not None and key in inserted:
            self.layer = inserted[key]
        else:
            self.layer = FeatureTap()
            self.student.insert(self.point, self.layer)
        self._captured: dict[str, Tensor] = {}
        self.layer.register_forward_hook(self._capture)

    def load_measured(self, arch: str, num_classes: int, path: str) -> KDNet:
        return load_with_kd_layers(arch, num_classes, path)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        self._captured["input"], self._captured["output"] = inputs[0], out

    def _pooled(self, split: Literal["train", "eval"]) -> tuple[Any, Any]:
        features, labels = [], []
        for batch in self.batches(split):
            self.student.forward_features(batch["images"])
            features.append(self._captured[self.features].float().mean((2, 3)).cpu())
            labels.append(batch["labels"].cpu())
        return torch.cat(features).double().numpy(), torch.cat(labels).numpy()

    def measure(self) -> dict[str, float]:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        train_x, train_y = self._pooled("train")
        test_x, test_y = self._pooled("eval")
        classifier = LinearDiscriminantAnalysis(solver=self.solver).fit(train_x, train_y)
        return {"lda_top1": 100.0 * float((classifier.predict(test_x) == test_y).mean())}

"""Deploy a trained student: the network its method deploys (``DistillationModule.deploy_student``), in one file.

    python -m benchmarks.export results/runs/<run_id>                 # the run's last weights -> <run>/deploy.pth
    python -m benchmarks.export results/runs/<run_id> --checkpoint best
    python -m benchmarks.export path/to/final.pth --out student.pth    # a kdbench network export or a run's .ckpt

A run folder or a run's Lightning checkpoint is rebuilt as the method that trained it (the checkpoint names it), and
the method says what a user deploys: the student itself for most methods; NORM's student with its feature transform
folded into the classifier — the FT (1x1 conv + BN, 1x1 conv + BN, optional identity shortcut) is affine per pixel
in eval mode and only global average pooling and the classifier follow it, so ``logits = W·GAP(A x + d) + b =
(W A)·GAP(x) + (b + W d)`` (spec methods-seed.md §1.5), checked numerically before anything is written (WRN students
cannot be folded, their FT sits before the final BN-ReLU: the command says so and exits with status 2); SimKD's
student up to its last stage with the trained projector and the reused teacher classifier
(``kd_modules.simkd.load_simkd_network`` reads it).  A student network file (a run's ``final.pth``) that carries
NORM's FT is folded the same way.  The written student is an ordinary ``kdbench-network`` checkpoint of the plain
architecture (``models.checkpoints.load_network`` reads it, e.g. as a teacher).

``final`` of a run folder reads its ``checkpoints/final.ckpt`` (the final weights of a method that deploys more than
its student, such as SimKD's projector), else ``final.pth`` (the final student).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.errors import KDBenchError, user_errors
from kd_modules import DistillationModule, method_class
from kd_modules.norm import NORMFeatureTransform, check_foldable, fold_error, fold_feature_transform
from models import KDNet, create_model
from models.checkpoints import CheckpointError, export_network, read_state_dict

__all__ = ["load_method", "export_run", "export_folded", "main"]

_CHECKPOINTS = {"final": "checkpoints/final.ckpt", "best": "checkpoints/best.ckpt", "last": "checkpoints/last.ckpt"}


def _resolve(source: Path, which: str) -> tuple[Path, Path]:
    """(checkpoint file, default output path) for a run folder or a checkpoint file."""
    if source.is_dir():
        path = source / _CHECKPOINTS[which]
        if which == "final" and not path.is_file():  # a method that deploys its student: the student file
            path = source / "final.pth"
        if not path.is_file():
            raise CheckpointError(f"run folder {source} has no {path.relative_to(source)} (is the run finished?)")
        suffix = "" if which == "final" else f"_{which}"
        return path, source / f"deploy{suffix}.pth"
    if not source.is_file():
        raise CheckpointError(f"not a run folder or checkpoint file: {source}")
    return source, source.with_name(f"{source.stem}.deploy.pth")


def load_method(path: str | Path) -> DistillationModule:
    """The method module of a run's Lightning checkpoint, rebuilt on the CPU in eval mode (its teacher included)."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=False)
    class_path = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", ""))
    if not class_path:
        raise CheckpointError(f"{path} is not a checkpoint of a kdbench run (it does not name its method)")
    cls = method_class(class_path.rsplit(".", 1)[-1])
    return cls.load_from_checkpoint(Path(path), map_location="cpu").eval()


def export_run(path: str | Path, out: str | Path, student: str | Path | None = None) -> tuple[Path, str]:
    """Write the network the method of the run checkpoint ``path`` deploys to ``out`` (with the student's weights
    from the network file ``student`` when given: a run's ``final.pth``); returns (out, summary)."""
    module = load_method(path)
    if student is not None:
        module.student.load_state_dict(read_state_dict(Path(student))[0])
    network = module.deploy_student()
    arch, size = module.hparams["student"], sum(p.numel() for p in network.parameters())
    if isinstance(network, KDNet):
        folded = sorted(set(getattr(module.student, "inserted", {})) - set(getattr(network, "inserted", {})))
        out = export_network(network, arch, out, deployed_from=str(path), method=type(module).__name__)
        how = f" with its {', '.join(folded)} insert folded into the classifier of {arch}" if folded else ""
    else:
        out = network.save(out)
        how = f" as a {type(network).__name__}"
    return Path(out), f"exported the {type(module).__name__} student {arch}{how} ({size:,} parameters) to {out}"


def _num_classes(arch: str, state: dict[str, torch.Tensor]) -> int:
    with torch.device("meta"):
        probe = create_model(arch, 1)
    key = next(name for name, p in probe.named_parameters() if p is probe.classifier.weight)
    if key not in state:
        raise CheckpointError(f"the checkpoint has no {key!r}: it does not hold a {arch}")
    return int(state[key].shape[0])


def export_folded(path: str | Path, out: str | Path) -> tuple[Path, str]:
    """Fold the NORM FT of the student in ``path`` and write the plain student to ``out``; returns (out, summary)."""
    path = Path(path)
    state, arch = read_state_dict(path)
    if arch is None:
        raise CheckpointError(f"{path} does not name its network (a run's final.pth or .ckpt does)")
    inserted = sorted({k.split(".")[1] for k in state if k.startswith("inserted.")})
    if not inserted:
        raise KDBenchError(f"{path} holds a plain {arch} without a NORM FT: nothing to fold")
    check_foldable(arch)  # unknown family or WRN placement: one clear line, before anything is built
    network = create_model(arch, _num_classes(arch, state))
    if len(inserted) != 1:
        raise KDBenchError(f"{path} has modules inserted at {', '.join(inserted)}; a NORM student has one FT")
    key = inserted[0]
    point = next((p for p in network.insertion_points() if p.replace(".", "_") == key), None)
    prefix = f"inserted.{key}."
    if point is None or f"{prefix}expand.0.weight" not in state or f"{prefix}contract.0.weight" not in state:
        raise KDBenchError(f"the module inserted at {key!r} in {path} is not a NORM FT")
    expand = state[f"{prefix}expand.0.weight"]
    residual = bool(state.get(f"{prefix}residual", torch.tensor(True)))
    network.insert(point, NORMFeatureTransform(expand.shape[1], expand.shape[0], residual=residual, init="default"))
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not fit a {arch} with a NORM FT: {str(error).splitlines()[0]}") from None
    network.eval()
    folded = fold_feature_transform(network, arch)
    error = fold_error(network, folded)
    before = sum(p.numel() for p in network.parameters())
    after = sum(p.numel() for p in folded.parameters())
    out = export_network(folded, arch, out, folded_from=str(path), fold_relative_error=error)
    kind = "default (residual)" if residual else "plain"
    summary = (
        f"folded the {kind} NORM FT at {point} ({expand.shape[1]}->{expand.shape[0]}->{expand.shape[1]}) into the "
        f"classifier of {arch}: {before:,} -> {after:,} parameters, logits max relative change {error:.1e}; "
        f"written to {out}"
    )
    return out, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="a run folder (results/runs/<id>) or a checkpoint file (final.pth, *.ckpt)")
    parser.add_argument("--out", help="output file (default: <run>/deploy.pth or <checkpoint>.deploy.pth)")
    parser.add_argument(
        "--checkpoint", choices=sorted(_CHECKPOINTS), default="final", help="which checkpoint of a run folder"
    )
    args = parser.parse_args(argv)
    with user_errors("benchmarks.export"):
        path, default_out = _resolve(Path(args.source), args.checkpoint)
        out = args.out or default_out
        if path.suffix != ".ckpt":
            _, summary = export_folded(path, out)
        else:  # the run's final student, with the method's own modules (SimKD's projector) from its checkpoint
            final = Path(args.source) / "final.pth"
            student = final if args.checkpoint == "final" and final.is_file() else None
            _, summary = export_run(path, out, student)
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

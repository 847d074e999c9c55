"""Deploy a NORM-trained student: fold its feature transform into the classifier and write a plain checkpoint.

    python -m benchmarks.export results/runs/<run_id>                 # final.pth of a run -> <run>/deploy.pth
    python -m benchmarks.export results/runs/<run_id> --checkpoint best
    python -m benchmarks.export path/to/final.pth --out student.pth    # a kdbench export or a run's .ckpt

NORM's FT (1x1 conv + BN, 1x1 conv + BN, optional identity shortcut) is affine per pixel in eval mode, and
only global average pooling and the classifier follow it, so ``logits = W·GAP(A x + d) + b = (W A)·GAP(x) +
(b + W d)`` (spec methods-seed.md §1.5).  The written file is an ordinary ``kdbench-network`` checkpoint of the
plain student architecture (``models.checkpoints.load_network`` reads it, e.g. as a teacher).  The fold is
checked numerically before anything is written.  WRN students cannot be folded (their FT sits before the final
BN-ReLU): the command says so and exits with status 2.

``--method simkd`` exports a SimKD run instead: the student up to its last stage, the trained projector and the
reused teacher classifier as one network (``kd_modules.simkd.load_simkd_network`` reads it), from the run's
Lightning checkpoint (``checkpoints/last.ckpt`` for ``final``)::

    python -m benchmarks.export results/runs/<run_id> --method simkd      # -> <run>/deploy.pth
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.errors import KDBenchError, user_errors
from kd_modules.norm import NORMFeatureTransform, check_foldable, fold_error, fold_feature_transform
from models import create_model
from models.checkpoints import CheckpointError, export_network, read_state_dict

__all__ = ["export_folded", "export_simkd", "main"]

_CHECKPOINTS = {"final": "final.pth", "best": "checkpoints/best.ckpt", "last": "checkpoints/last.ckpt"}


def _resolve(source: Path, which: str) -> tuple[Path, Path]:
    """(checkpoint file, default output path) for a run folder or a checkpoint file."""
    if source.is_dir():
        path = source / _CHECKPOINTS[which]
        if not path.is_file():
            raise CheckpointError(f"run folder {source} has no {_CHECKPOINTS[which]} (is the run finished?)")
        suffix = "" if which == "final" else f"_{which}"
        return path, source / f"deploy{suffix}.pth"
    if not source.is_file():
        raise CheckpointError(f"not a run folder or checkpoint file: {source}")
    return source, source.with_name(f"{source.stem}.deploy.pth")


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


def export_simkd(path: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write the deployable SimKD network of the run checkpoint ``path`` to ``out``; returns (out, summary)."""
    from kd_modules.simkd import save_simkd_network, simkd_network_from_run_checkpoint

    network, student_arch, teacher_arch = simkd_network_from_run_checkpoint(path)
    out = save_simkd_network(network, student_arch, teacher_arch, out)
    size = sum(p.numel() for p in network.parameters())
    summary = (
        f"exported the SimKD student {student_arch} with its projector and the {teacher_arch} classifier "
        f"({size:,} parameters) to {out}"
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
    parser.add_argument(
        "--method",
        choices=["norm", "simkd"],
        default="norm",
        help="norm: fold NORM's feature transform; simkd: student + projector + teacher classifier",
    )
    args = parser.parse_args(argv)
    with user_errors("benchmarks.export"):
        if args.method == "simkd":
            which = "last" if args.checkpoint == "final" else args.checkpoint
            path, default_out = _resolve(Path(args.source), which)
            if Path(args.source).is_dir():
                default_out = Path(args.source) / "deploy.pth"
            _, summary = export_simkd(path, args.out or default_out)
        else:
            path, default_out = _resolve(Path(args.source), args.checkpoint)
            _, summary = export_folded(path, args.out or default_out)
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Reference (RepDistiller/mdistiller/ND) checkpoints: key layouts, synthetic teacher files, mismatch errors.

The layouts in ``reference_keys/*.json`` were dumped from RepDistiller's model files (see the README there); the
synthetic checkpoints below have exactly the released files' format, ``{'epoch', 'model': state_dict, 'accuracy',
'optimizer'}``, with random tensors of the reference shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoints import CheckpointMismatchError, load_network
from models.profile import meta_model
from models.releases import CIFAR_TEACHERS

REFERENCE_DIR = Path(__file__).parent / "reference_keys"
REFERENCE_ARCHS = sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))


def reference_layout(arch: str) -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads((REFERENCE_DIR / f"{arch}.json").read_text())
    assert data["arch"] == arch and data["num_classes"] == 100
    return [(key, tuple(shape)) for key, shape in data["state_dict"]]


def synthetic_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_layout(arch):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(187_680)  # 240 epochs x 782 steps
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def save_reference_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 240, "model": state, "accuracy": 75.0, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def test_reference_layouts_cover_the_zoo() -> None:
    assert len(REFERENCE_ARCHS) == 22
    assert set(CIFAR_TEACHERS) <= set(REFERENCE_ARCHS)


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_state_dict_layout_equals_the_reference_key_for_key(arch: str) -> None:
    ours = [(k, tuple(v.shape)) for k, v in meta_model(arch, 100).state_dict().items()]
    assert ours == reference_layout(arch)


@pytest.mark.parametrize("arch", CIFAR_TEACHERS)
def test_synthetic_teacher_checkpoint_loads_consuming_every_key(arch: str, tmp_path: Path) -> None:
    state = synthetic_state(arch)
    path = save_reference_checkpoint(tmp_path / "ckpt_epoch_240.pth", state)
    network = load_network(arch, 100, path)
    loaded = network.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_nd_wrn_final_bn_named_bn_is_mapped(tmp_path: Path) -> None:
    # ND's wrn_cifar.py registers the final BatchNorm as `bn` (RepDistiller: `bn1`); block BNs keep their names.
    state = {
        ("bn." + k[len("bn1.") :] if k.startswith("bn1.") else k): v for k, v in synthetic_state("wrn_40_2").items()
    }
    assert "bn.running_var" in state and "block1.layer.0.bn1.weight" in state
    network = load_network("wrn_40_2", 100, save_reference_checkpoint(tmp_path / "nd.pth", state))
    assert torch.equal(network.bn1.running_var, state["bn.running_var"])


def test_data_parallel_prefix_and_missing_batch_counters_are_accepted(tmp_path: Path) -> None:
    state = synthetic_state("resnet56")
    wrapped = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    network = load_network("resnet56", 100, save_reference_checkpoint(tmp_path / "dp.pth", wrapped))
    assert torch.equal(network.fc.weight, state["fc.weight"])
    assert int(network.bn1.num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("saved", "requested"), [("resnet56", "resnet20"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1")]
)
def test_wrong_architecture_names_both(saved: str, requested: str, tmp_path: Path) -> None:
    path = save_reference_checkpoint(tmp_path / "ckpt_epoch_240.pth", synthetic_state(saved))
    with pytest.raises(CheckpointMismatchError) as error:
        load_network(requested, 100, path)
    message = str(error.value)
    assert f"holds {saved}, not {requested}" in message
    assert "\n" not in message


def test_one_by_one_conv_classifier_fills_the_linear(tmp_path: Path) -> None:
    # mdistiller's Tiny-ImageNet MobileNetV2 classifies with a 1x1 conv `conv2` (K, 1280, 1, 1).
    state = {
        k: torch.zeros(v.shape, dtype=v.dtype)
        for k, v in meta_model("MobileNetV2_mdistiller_tiny").state_dict().items()
    }
    state["conv2.weight"] = torch.randn(200, 1280, 1, 1)
    network = load_network("MobileNetV2_mdistiller_tiny", 200, save_reference_checkpoint(tmp_path / "mv2.pth", state))
    assert torch.equal(network.classifier.weight, state["conv2.weight"].view(200, 1280))

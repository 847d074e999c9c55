"""`python -m benchmarks.zoo --format csv` against the spec's parameter and MAC counts.

The numbers below are copied from ../shared/specs/architectures-and-recipes.md (measured there by instantiating the
reference model files): tables A.1 (CIFAR-100, 100 classes, MACs in millions), B (ImageNet, 1000 classes, MACs in
billions) and C (Tiny-ImageNet, 200 classes, MACs in millions).  Parameters must match exactly, MACs within 1%.
"""

from __future__ import annotations

import contextlib
import csv
import io

import pytest

from benchmarks import zoo
from models import list_models

# name: (params, MACs, penultimate dimension)
SPEC_A1_CIFAR = {
    "resnet8": (83_892, 12.51e6, 64),
    "resnet14": (181_108, 26.66e6, 64),
    "resnet20": (278_324, 40.82e6, 64),
    "resnet32": (472_756, 69.13e6, 64),
    "resnet44": (667_188, 97.44e6, 64),
    "resnet56": (861_620, 125.75e6, 64),
    "resnet110": (1_736_564, 253.16e6, 64),
    "resnet8x4": (1_233_540, 177.07e6, 256),
    "resnet32x4": (7_433_860, 1083.04e6, 256),
    "resnet20_half": (71_756, 10.32e6, 32),
    "wrn_16_1": (180_916, 26.66e6, 64),
    "wrn_16_2": (703_284, 101.12e6, 128),
    "wrn_40_1": (569_780, 83.29e6, 64),
    "wrn_40_2": (2_255_156, 327.61e6, 128),
    "vgg8": (3_965_028, 96.19e6, 512),
    "vgg11": (9_277_284, 209.44e6, 512),
    "vgg13": (9_462_180, 284.94e6, 512),
    "vgg16": (14_774_436, 398.18e6, 512),
    "vgg19": (20_086_692, 511.43e6, 512),
    "MobileNetV2": (812_836, 6.52e6, 1280),
    "ShuffleV1": (949_258, 38.69e6, 960),
    "ShuffleV2": (1_355_528, 44.50e6, 1024),
    "ResNet50": (23_705_252, 1298.01e6, 2048),
}
SPEC_B_IMAGENET = {
    "resnet18": (11_689_512, 1.814e9, 512),
    "resnet34": (21_797_672, 3.664e9, 512),
    "resnet50": (25_557_032, 4.089e9, 2048),
    "resnet101": (44_549_160, 7.801e9, 2048),
    "resnet152": (60_192_808, 11.514e9, 2048),
    "mobilenetv1": (4_231_976, 0.569e9, 1024),
    "mobilenetv2": (3_504_872, 0.301e9, 1280),
    "mobilenetv2_050": (1_968_680, 0.097e9, 1280),
    "resnet50_quarter": (2_000_744, 0.366e9, 512),
    # timm's transformers and RegNet (models/imagenet/timm_nets.py), not in the spec: the parameter counts of timm's
    # model cards (ViT-S/16 22.05M, ViT-B/16 86.57M, DeiT-B distilled 87.34M, RegNetY-16GF 83.59M) and the FLOPs the
    # DeiT paper (Table 1: DeiT-S 4.6G, DeiT-B 17.6G) and the RegNet paper (RegNetY-16GF 15.9G) print.
    "vit_s": (22_050_664, 4.6e9, 384),
    "vit_b": (86_567_656, 17.6e9, 768),
    "deit_b_distilled": (87_338_192, None, 768),
    "regnety_16gf": (83_590_140, 15.9e9, 3024),
}
# Table C has no MAC figure for ShuffleV2 (it crashes in mdistiller at 64x64; ours has the pool fixed): None.
SPEC_C_TINY = {
    "resnet56_tiny": (868_120, 503.0e6, 64),
    "resnet20_tiny": (284_824, 163.3e6, 64),
    "wrn_40_2_tiny": (2_268_056, 1310.4e6, 128),
    "wrn_16_2_tiny": (716_184, 404.5e6, 128),
    "wrn_40_1_tiny": (576_280, 333.1e6, 64),
    "ShuffleV1_tiny": (1_045_358, 154.6e6, 960),
    "MobileNetV2_tiny": (940_936, 25.8e6, 1280),
    "ResNet50_tiny": (23_910_152, 5191.7e6, 2048),
    "resnet18_torchvision_tiny": (11_279_112, 148.1e6, 512),
    "ResNet18_tiny": (11_271_432, 2221.8e6, 512),
    "MobileNetV2_mdistiller_tiny": (2_497_480, 215.7e6, 1280),
    "ShuffleV2_tiny": (1_458_028, None, 1024),
}
SPEC = {**SPEC_A1_CIFAR, **SPEC_B_IMAGENET, **SPEC_C_TINY}


@pytest.fixture(scope="module")
def zoo_csv() -> dict[str, dict[str, str]]:
    """The rows `python -m benchmarks.zoo --format csv` prints, by network name."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert zoo.main(["--format", "csv"]) == 0
    return {row["name"]: row for row in csv.DictReader(io.StringIO(buffer.getvalue()))}


def test_every_registered_network_is_in_the_zoo_table_and_in_the_spec(zoo_csv: dict[str, dict[str, str]]) -> None:
    assert set(zoo_csv) == set(list_models())
    assert set(SPEC) == set(list_models()), "every network has its reference counts written down here"


@pytest.mark.parametrize("name", sorted(SPEC))
def test_params_exact_and_macs_within_one_percent(name: str, zoo_csv: dict[str, dict[str, str]]) -> None:
    params, macs, penultimate = SPEC[name]
    row = zoo_csv[name]
    assert int(row["params"]) == params
    assert int(row["embedding_dim"]) == penultimate
    if macs is not None:
        assert abs(int(row["macs"]) - macs) <= 0.01 * macs, f"{name}: {int(row['macs']) / 1e6:.2f}M vs {macs / 1e6}M"


def test_class_counts_and_input_sizes_follow_the_dataset(zoo_csv: dict[str, dict[str, str]]) -> None:
    expected = {"cifar": ("100", "32"), "tiny-imagenet": ("200", "64"), "imagenet": ("1000", "224")}
    for row in zoo_csv.values():
        assert (row["num_classes"], row["input_size"]) == expected[row["dataset"]], row["name"]


def test_markdown_lists_stage_shapes(zoo_csv: dict[str, dict[str, str]]) -> None:
    rows = zoo.zoo_rows("cifar")  # cached rows: computed once, by the CLI run of the fixture
    text = zoo.render_markdown(rows)
    assert text.count("\n") == len(rows) + 2
    line = next(line for line in text.splitlines() if line.startswith("| resnet32x4 |"))
    assert "| 7,433,860 | 1083.04 | 256 | 32x32x32 | 64/128/256 | 32/16/8 | 256x8x8 |" in line
    mobilenet = next(r for r in rows if r.name == "MobileNetV2")
    assert (mobilenet.stage_channels, mobilenet.stage_sizes, mobilenet.final_map) == (
        "12/16/48/160",
        "16/8/4/2",
        "1280x2x2",
    )


def test_zoo_cli_refuses_an_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        zoo.main(["--dataset", "mnist"])
    assert "invalid choice: 'mnist'" in capsys.readouterr().err

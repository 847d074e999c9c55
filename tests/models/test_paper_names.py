"""tables/paper_names.yaml: every network of the papers' CSV that kdbench builds has a registered name mapped to it."""

from __future__ import annotations

import csv

import yaml

from benchmarks.tables import PAPER_CSV, PAPER_NAMES, paper_name
from models import list_models, model_entry

# Dataset column of the CSV -> our input family.
FAMILY = {"cifar100": "cifar", "tiny-imagenet": "tiny-imagenet", "imagenet": "imagenet"}
# Networks the papers report that kdbench does not build (empty = no network).
NOT_BUILT = {""}


def test_every_classification_network_of_the_csv_is_mapped() -> None:
    with open(PAPER_CSV, newline="") as handle:
        used = {(r["dataset"], r[column]) for r in csv.DictReader(handle) for column in ("teacher", "student")}
    mapped: dict[str, set[str]] = {}
    for name in list_models():
        mapped.setdefault(model_entry(name).dataset, set()).add(paper_name(name))
    missing = sorted(
        (dataset, name)
        for dataset, name in used
        if dataset in FAMILY and name not in NOT_BUILT and name not in mapped[FAMILY[dataset]]
    )
    assert not missing, f"CSV networks without a kdbench name: {missing}"


def test_every_mapped_name_is_a_registered_network_and_a_csv_name() -> None:
    mapping = yaml.safe_load(PAPER_NAMES.read_text())
    with open(PAPER_CSV, newline="") as handle:
        csv_names = {r[c] for r in csv.DictReader(handle) for c in ("teacher", "student")}
    registered = set(list_models())
    assert set(mapping) <= registered
    assert set(mapping.values()) <= csv_names
    assert (paper_name("resnet20_half"), paper_name("ShuffleV2"), paper_name("resnet50_quarter")) == (
        "resnet20_0.5x",
        "shufflenetv2",
        "resnet50_1_4",
    )

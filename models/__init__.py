"""kdbench networks: every model of the four papers' tables behind one contract (see :mod:`models.contract`)."""

from models.contract import FeatureOutput, FeatureShape, FeatureUnavailable, KDNet
from models.registry import UnknownModelError, create_model, list_models, model_entry, register_model

__all__ = [
    "FeatureOutput",
    "FeatureShape",
    "FeatureUnavailable",
    "KDNet",
    "UnknownModelError",
    "create_model",
    "list_models",
    "model_entry",
    "register_model",
]

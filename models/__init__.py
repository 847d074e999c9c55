"""kdbench networks: every model of the four papers' tables behind one contract (see :mod:`models.contract`)."""

from models.contract import FeatureOutput, FeatureShape, FeatureUnavailable, KDNet
from models.registry import UnknownModelError, register_model

_ZOO = ("create_model", "list_models", "model_entry")


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``create_model`` / ``list_models`` / ``model_entry`` come from :mod:`models.zoo` (every family loaded)."""
    if name in _ZOO:
        from models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


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

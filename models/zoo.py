"""Every network family, registered: the one module that imports them all (the registry imports none).

``create_model``, ``list_models`` and ``model_entry`` are :mod:`models.registry`'s, re-exported once the families
below have registered their networks; ``models.create_model`` etc. resolve here.
"""

from __future__ import annotations

import models.cifar  # noqa: F401  (registers on import)
import models.imagenet  # noqa: F401
import models.tiny_imagenet  # noqa: F401
from models.registry import ModelEntry, UnknownModelError, create_model, list_models, model_entry

__all__ = ["ModelEntry", "UnknownModelError", "create_model", "list_models", "model_entry"]

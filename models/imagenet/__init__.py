"""ImageNet (224x224) networks: torchvision's ResNets and MobileNetV2 (wrapped in the network contract), mdistiller's
MobileNetV1 and NORM's ResNet50-1/4.  Every module here registers its networks on import."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

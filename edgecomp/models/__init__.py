"""Model registry: ``build_model(name, input_shape, num_classes, **options)``.

Importing this package registers every built-in architecture.
"""

from edgecomp.models.base import build_model, load_keras_model, model_names, register_model
from edgecomp.models import vgg  # noqa: E402,F401  (registers "vgg")
from edgecomp.models import resnet, densenet, inception, unet, pointnet  # noqa: E402,F401  (the seed's zoo)
from edgecomp.models import mobilenet_sparse  # noqa: E402,F401  (XNNPACK sparse-path layout)

__all__ = ["build_model", "load_keras_model", "model_names", "register_model"]

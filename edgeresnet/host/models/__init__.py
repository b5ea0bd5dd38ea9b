"""Built-in ResNets (tf_keras), their registry and MAC counts, and loading users' models.

Importing this package does not import TensorFlow; building or loading does.
"""

from edgeresnet.host.models.loading import LoadedModel, load_model
from edgeresnet.host.models.registry import (
    ALIASES,
    ARCHITECTURES,
    ArchSpec,
    architecture_table,
    build_model,
    count_macs,
    get_arch,
)

__all__ = [
    "ALIASES",
    "ARCHITECTURES",
    "ArchSpec",
    "LoadedModel",
    "architecture_table",
    "build_model",
    "count_macs",
    "get_arch",
    "load_model",
]

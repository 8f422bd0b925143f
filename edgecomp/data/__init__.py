"""Dataset registry: ``load_dataset(name)`` returns a :class:`Dataset`.

Importing this package registers every built-in loader.
"""

from edgecomp.data.base import Dataset, dataset_names, load_dataset, register_dataset

# Each import registers its loaders.
from edgecomp.data import fashion_mnist, cifar, synthetic, files  # noqa: E402,F401
from edgecomp.data import modelnet40, person_seg, synthetic_zoo  # noqa: E402,F401  (the seed's zoo data)

__all__ = ["Dataset", "dataset_names", "load_dataset", "register_dataset"]

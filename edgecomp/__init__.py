"""edgecomp: Deep Compression for Keras 3 CNNs, shipped to edge runtimes.

    >>> import edgecomp
    >>> ds = edgecomp.load_dataset("fashion_mnist")
    >>> model = edgecomp.build_model("vgg", ds.input_shape, ds.num_classes)
    >>> result = edgecomp.compress(model, ds, rate=0.8)
    >>> result.save("vgg.ecz"); small = edgecomp.load_compressed("vgg.ecz")
"""

__version__ = "0.1.0"

from edgecomp.errors import ContainerError, EdgecompError  # noqa: E402


def __getattr__(name):
    # Lazy public surface: importing edgecomp does not import TensorFlow.
    if name in ("load_dataset", "dataset_names"):
        from edgecomp import data
        return getattr(data, name)
    if name in ("build_model", "model_names", "load_keras_model"):
        from edgecomp import models
        return getattr(models, name)
    if name in ("compress", "CompressedModel"):
        from edgecomp import pipeline
        return getattr(pipeline, name)
    if name in ("save_compressed", "load_compressed"):
        from edgecomp import store
        return getattr(store, name)
    raise AttributeError(f"module 'edgecomp' has no attribute {name!r}")


__all__ = ["compress", "CompressedModel", "load_dataset", "dataset_names", "build_model", "model_names",
           "load_keras_model", "save_compressed", "load_compressed", "EdgecompError", "ContainerError"]

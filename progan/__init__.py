"""progan: Progressive Growing of GANs for TensorFlow 2 / Keras 3."""

__version__ = "0.2.0"


def _check_backend():
    """Fail at import with one clear line on an unsupported Keras/TensorFlow."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ chatter; real failures raise in Python
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        raise ImportError(
            f"progan needs the TensorFlow Keras backend, but KERAS_BACKEND={backend!r}; "
            "unset it or set KERAS_BACKEND=tensorflow")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "progan needs TensorFlow >= 2.16: pip install 'progan[tf]' "
            "(or [cpu] for tensorflow-cpu, [gpu] for tensorflow[and-cuda])") from error
    import keras

    if int(keras.__version__.split(".")[0]) < 3:
        raise ImportError(
            f"progan needs Keras 3, found keras {keras.__version__}; pip install 'keras>=3'")
    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            f"progan needs the TensorFlow Keras backend, found {keras.backend.backend()!r}; "
            "set KERAS_BACKEND=tensorflow")
    major, minor = (int(part) for part in tf.__version__.split(".")[:2])
    if (major, minor) < (2, 16):
        raise ImportError(f"progan needs TensorFlow >= 2.16, found {tf.__version__}")


_check_backend()

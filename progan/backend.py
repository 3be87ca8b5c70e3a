"""TensorFlow and Keras, imported once, checked, with TensorFlow's start-up chatter kept out.

    from progan.backend import keras, tf

`import progan` does not import TensorFlow (so `progan --help` is instant); the modules that
compute import ``tf`` and ``keras`` from here. An unsupported set-up fails with one line.
"""

from __future__ import annotations

import os

from progan.system import held_native_stderr


def _import_quietly():
    """``import tensorflow, keras`` with TensorFlow's C++ start-up lines held back."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with held_native_stderr():
        import keras
        import tensorflow
    return tensorflow, keras


def _checked_import():
    """(tensorflow, keras) after checking for TF >= 2.16 with Keras 3 on the TF backend."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        raise ImportError(
            f"progan needs the TensorFlow Keras backend, but KERAS_BACKEND={backend!r}; "
            "unset it or set KERAS_BACKEND=tensorflow")
    try:
        tf, keras = _import_quietly()
    except ImportError as error:
        raise ImportError(
            "progan needs TensorFlow >= 2.16: pip install 'progan[tf]' "
            "(or [cpu] for tensorflow-cpu, [gpu] for tensorflow[and-cuda])") from error
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
    return tf, keras


tf, keras = _checked_import()

"""progan: Progressive Growing of GANs for TensorFlow 2 / Keras 3.

    import progan
    networks = progan.ProGAN(progan.load_config("demo").model)
    progan.RunDir("runs/demo").select_one("best")

Importing the package is instant: TensorFlow loads when a name that needs it is first used.
"""

from progan.errors import ProganError

__version__ = "0.2.0"

# public name -> module that defines it (imported on first use, PEP 562)
_PUBLIC = {
    "Config": "progan.config", "ConfigError": "progan.config", "load_config": "progan.config",
    "PRESETS": "progan.config",
    "RunDir": "progan.run", "RunError": "progan.run",
    "ProGAN": "progan.networks",
    "Schedule": "progan.training.schedule",
    "load_generator": "progan.generate", "generate": "progan.generate",
    "interpolate": "progan.generate", "export": "progan.generate",
}

__all__ = ["ProganError", "__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'progan' has no attribute {name!r}")

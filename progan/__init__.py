"""progan: Progressive Growing of GANs for TensorFlow 2 / Keras 3.

    import progan
    progan.train()                                   # the demo, as `progan train` runs it
    generator = progan.load_generator("runs/demo")   # the EMA generator of the latest snapshot
    images = progan.generate(generator, seeds=range(8))

The functions mirror the commands (`progan.api`); `Config`, `load_config`, `ProGAN`,
`Schedule` and `RunDir` are the building blocks. Importing the package is instant:
TensorFlow loads when a name that needs it is first used. No public name is a module, so
importing a submodule never changes what a name means.
"""

from progan.errors import ProganError

__version__ = "0.2.0"

# public name -> module that defines it (imported on first use, PEP 562)
_PUBLIC = {
    "train": "progan.api", "resume": "progan.api", "finetune": "progan.api",
    "evaluate": "progan.api", "load_generator": "progan.api", "generate": "progan.api",
    "interpolate": "progan.api", "export": "progan.api",
    "Config": "progan.config", "ConfigError": "progan.config", "load_config": "progan.config",
    "PRESETS": "progan.config",
    "RunDir": "progan.run", "RunError": "progan.run",
    "ProGAN": "progan.networks",
    "Schedule": "progan.schedule",
}

__all__ = ["ProganError", "__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'progan' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

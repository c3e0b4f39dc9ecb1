"""The version of cxrtl: written once, here; ``cxrtl.__version__`` and pyproject.toml read it."""

__version__ = "0.1.0"

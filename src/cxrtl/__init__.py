"""cxrtl: transfer learning on chest radiographs."""
__version__ = "0.1.0"

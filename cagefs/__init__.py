"""cagefs: a transparent encrypted filesystem whose every backing file is an age v1 file."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cagefs")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown (not installed)"

"""pneumoscan: train, evaluate, explain and serve pediatric chest X-ray classifiers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pneumoscan")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

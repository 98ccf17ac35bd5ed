"""vlreward: train, evaluate and serve multimodal (vision-language) reward models.

The import packages are ``vlreward.service`` (inference: model contract, backends, HTTP service,
client) and ``vlreward.training`` (produces checkpoints); ``vlreward.cli`` assembles the one
``vlreward`` command. Importing this package loads nothing heavy.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlreward")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

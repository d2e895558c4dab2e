"""greenroom's shared package: what producer services and workers both import."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("greenroom")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

"""The package's error classes. Each message is one line naming the problem and the fix.

This module imports nothing from the package, so every module can raise these without an import cycle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config: the message is one line that names the problem and how to fix it."""


class TrainingError(RuntimeError):
    """The run cannot go on; the message is one line saying why and what to do."""


class DataError(ConfigError):
    """A dataset that cannot be loaded or used; the message is one line naming the problem and the fix."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be written (disk full, I/O error) or no intact one is left to resume from."""

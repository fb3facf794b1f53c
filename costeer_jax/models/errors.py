"""Errors of model loading whose message tells the user what is wrong and how to fix it."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A checkpoint cannot be found, assembled, parsed or converted."""

"""Where costeer-jax keeps what it derives once and reuses: assembled model files, converted
params, compiled programs. One root, `$COSTEER_JAX_CACHE` or `$XDG_CACHE_HOME/costeer_jax`
(default `~/.cache/costeer_jax`), with one folder per kind; `$COSTEER_JAX_PARAMS_CACHE` moves the
converted params alone."""
from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV_VAR = "COSTEER_JAX_CACHE"
PARAMS_ENV_VAR = "COSTEER_JAX_PARAMS_CACHE"  # the params folder alone elsewhere (the test suite's tiny models)


def cache_root() -> Path:
    if os.environ.get(ROOT_ENV_VAR):
        return Path(os.environ[ROOT_ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "costeer_jax"


def models_dir() -> Path:
    """GGUF files assembled from the data-only packages of the model registry."""
    return cache_root() / "models"


def params_dir() -> Path:
    """Converted params (dequantized, fused, laid out for our decoder), memory-mapped on load."""
    if os.environ.get(PARAMS_ENV_VAR):
        return Path(os.environ[PARAMS_ENV_VAR]).expanduser()
    return cache_root() / "params"


def xla_dir() -> Path:
    """JAX's persistent compilation cache."""
    return cache_root() / "xla"

"""absl entry-point wrapper: bad input ends with one clear line naming the fix, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is written for the user (what is wrong and how to fix it)."""
    from costeer_jax.data.jsonl import DataFormatError
    from costeer_jax.eval.judge import JudgeConfigurationError
    from costeer_jax.eval.reward import RewardModelUnavailable
    from costeer_jax.eval.wordnet_setup import WordNetMissingError
    from costeer_jax.models.chat import TokenizerMismatchError
    from costeer_jax.models.config import UnsupportedArchitectureError
    from costeer_jax.models.loading import ModelLoadError
    from costeer_jax.process_env import MappingLimitError

    return (DataFormatError, JudgeConfigurationError, RewardModelUnavailable, WordNetMissingError,
            TokenizerMismatchError, UnsupportedArchitectureError, ModelLoadError, MappingLimitError,
            FileNotFoundError, ValueError)


def run(main: Callable) -> None:
    from absl import app

    def guarded(argv):
        try:
            return main(argv)
        except user_errors() as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)

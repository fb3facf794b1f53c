"""Benchmark task adapters: every dataset row becomes an `Example` (query, personalized query, reference)."""
from costeer_jax.data.costeer_release import COSTEER_TASKS, PREFERENCE_TASKS, PREFERENCES, preference_prompt
from costeer_jax.data.example import Example
from costeer_jax.data.jsonl import DataFormatError
from costeer_jax.data.lamp import PROFILE_TASKS
from costeer_jax.data.tasks import TASKS, default_data_dir, is_preference_task, load_prompts_file, load_task

__all__ = [
    "COSTEER_TASKS", "DataFormatError", "Example", "PREFERENCES", "PREFERENCE_TASKS", "PROFILE_TASKS",
    "TASKS", "default_data_dir", "is_preference_task", "load_prompts_file", "load_task", "preference_prompt",
]

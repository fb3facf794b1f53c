"""Built-in example prompts for `make demo`: everyday requests with a short private context
(written for this project), in the generic {"id", "input", "personalized_input"} form."""
from __future__ import annotations

from costeer_jax.data.example import Example

DEMO_PROMPTS = [
    ("sleep", "Give me three tips for sleeping better.",
     "I work night shifts as a nurse and have to sleep during the day."),
    ("haiku", "Write a haiku about autumn.",
     "I love cats; my cat Miso naps in the fallen leaves every afternoon."),
    ("weekend", "Suggest a weekend activity.",
     "I am a retired engineer who loves birdwatching and lives near a lake."),
    ("cooking", "How should I start learning to cook?",
     "I am a vegetarian student with a tiny kitchen and a small budget."),
    ("book", "Recommend a book to read next.",
     "I loved Dune and The Left Hand of Darkness, and I read on a long train commute."),
    ("workout", "Plan a short workout.",
     "I have a bad knee and only 15 minutes in the morning."),
    ("birthday", "Write a birthday message for my friend.",
     "My friend Ana just moved to Lisbon and loves surfing."),
    ("france", "What is the capital of France?",
     "I am a geography teacher preparing a lesson for ten-year-olds."),
]


def demo_examples() -> list[Example]:
    """The private context goes before the query, as CoGenesis-style personalized inputs do."""
    return [Example(i, query, f"{context} {query}") for i, query, context in DEMO_PROMPTS]

"""The one record every task adapter produces and every generator / evaluator consumes."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Example:
    """One evaluation item.

    `query` is what a context-free model sees (the cloud LLM in CoSteer); `personalized_query`
    additionally carries the private context (profile, history, retrieved records or preference).
    `reference` is the gold output where the benchmark has one (None for preference tasks).
    `meta` holds task-specific extras that evaluators need (e.g. the CoGenesis profile for the
    judge, the preference for the reward model); it must stay JSON-serialisable.
    """

    id: str
    query: str
    personalized_query: str
    reference: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

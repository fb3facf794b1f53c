"""What the cloud sees, per method: the one definition behind the `cloud_view` field of output rows.

Every cloud method receives the bare query (public by the papers' assumption); the cloud view is
what it receives or holds *beyond* that, as token ids in order of arrival:

| method | the cloud's view |
|---|---|
| llm_wo | the committed tokens (its own output) |
| llm_w | the personalized prompt (private context included), then the committed tokens |
| costeer, light_costeer, ada_costeer, fuse, proxy_tuning, costeer_map, costeer_byte | the committed tokens (the LLM's own ids): the edge picks each token and uplinks it |
| specsteer, sd, specsteer_cross | per iteration, the K drafted tokens as uplinked (accepted or not), then the token drawn at the first rejection or the bonus token; the drafts a row's budget or EOS cut off were uplinked too (specsteer_cross uplinks the drafts' text: its view is the LLM's tokens of that text) |
| slm_wo, slm_w, cs, sft | nothing: the SLM (sft: with its LoRA adapter) decodes alone on the edge |

The speculative kernel records its uplinked drafts and committed tokens into one buffer per row
(`decoding.speculative`, `cloud_tokens`); its Appendix D uplink bytes count the same drafts.
"""
from __future__ import annotations

from typing import Sequence

NOTHING = "nothing"
COMMITTED = "committed"
PROMPT_AND_COMMITTED = "personalized prompt, committed"
UPLINKED = "uplinked drafts and committed tokens"

CLOUD_VIEW = {
    "llm_wo": COMMITTED, "llm_w": PROMPT_AND_COMMITTED,
    "slm_wo": NOTHING, "slm_w": NOTHING, "cs": NOTHING, "sft": NOTHING,
    "costeer": COMMITTED, "light_costeer": COMMITTED, "ada_costeer": COMMITTED, "fuse": COMMITTED,
    "proxy_tuning": COMMITTED, "costeer_map": COMMITTED, "costeer_byte": COMMITTED,
    "specsteer": UPLINKED, "sd": UPLINKED, "specsteer_cross": UPLINKED,
}


def cloud_view(method: str, committed: Sequence[int], personalized_prompt: Sequence[int] = (),
               uplinked: Sequence[int] | None = None) -> list[int]:
    """The token ids the cloud received for one row (see the module table)."""
    kind = CLOUD_VIEW.get(method)
    if kind is None:
        raise ValueError(f"no cloud view defined for method {method!r}")
    if kind == NOTHING:
        return []
    if kind == COMMITTED:
        return list(committed)
    if kind == PROMPT_AND_COMMITTED:
        return list(personalized_prompt) + list(committed)
    if uplinked is None:
        raise ValueError(f"{method}: the cloud view needs the kernel's record of uplinked tokens")
    return list(uplinked)

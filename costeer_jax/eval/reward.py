"""Preference-alignment scoring with a reward model (CoSteer Sec. 4.2: ArmoRM-Llama3-8B).

Each response is scored as the assistant turn of a two-turn chat whose user turn is the
preference-aware prompt (query + "Your answer should be as {preference} as possible"), so the
reward reflects how well the response meets that preference. Needs the optional torch extra
(`pip install -e .[reward]`); the rest of the project never imports torch.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

DEFAULT_REWARD_MODEL = "RLHFlow/ArmoRM-Llama3-8B-v0.1"


class RewardModelUnavailable(RuntimeError):
    pass


class ResponseScorer(Protocol):
    """Anything that maps (prompt, response) to a scalar, higher meaning better aligned."""

    def score(self, prompt: str, response: str) -> float: ...


class ArmoRMScorer:
    """A transformers sequence-classification reward model, ArmoRM-style.

    ArmoRM's remote code returns `.score` (the gated preference score); plain classification
    heads return `.logits`, of which the first column is used, so any single-output reward
    model (or a tiny stand-in) works behind the same interface.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_REWARD_MODEL, device: str = "auto",
                 dtype: str = "auto", max_length: int = 4096, trust_remote_code: bool = True,
                 local_files_only: bool = False):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as error:
            raise RewardModelUnavailable(
                f"the reward metric needs torch: pip install -e .[reward] ({error})") from error
        self._torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.max_length = max_length
        # ArmoRM ships its gating head as remote code, hence trust_remote_code by default.
        load_options: dict[str, Any] = dict(trust_remote_code=trust_remote_code, local_files_only=local_files_only)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **load_options)
            model_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model_name_or_path, dtype=model_dtype, **load_options)
        except Exception as error:  # missing folder, unreachable hub, gated repo, broken remote code
            raise RewardModelUnavailable(
                f"could not load reward model {model_name_or_path!r} ({error}). Pass --reward_model a local "
                f"folder holding an ArmoRM-style checkpoint (e.g. a download of {DEFAULT_REWARD_MODEL}) "
                "or a hub id reachable from this machine") from error
        if not getattr(self.tokenizer, "chat_template", None):
            raise RewardModelUnavailable(
                f"tokenizer of {model_name_or_path!r} has no chat template; the reward model scores chats")
        self.model.to(self.device).eval()

    def chat_input_ids(self, prompt: str, response: str):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        # The chat template already writes BOS where the model wants it.
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True,
                                 max_length=self.max_length)
        return encoded["input_ids"].to(self.device)

    def score(self, prompt: str, response: str) -> float:
        with self._torch.no_grad():
            output = self.model(input_ids=self.chat_input_ids(prompt, response))
        value = getattr(output, "score", None)
        if value is None:
            value = output.logits[:, 0]
        return float(value.float().reshape(-1)[0].cpu())


def score_responses(scorer: ResponseScorer, prompts: Sequence[str], responses: Sequence[str],
                    description: str = "reward") -> list[float]:
    from tqdm.auto import tqdm

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [scorer.score(prompt, response)
            for prompt, response in tqdm(list(zip(prompts, responses)), desc=description, leave=False)]

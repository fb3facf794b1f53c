"""Chat framing shared by every stream, identical to the papers' (and the reference loop's):
a fixed system turn, then the user turn, then the generation prompt."""
from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful assistant."


class TokenizerMismatchError(ValueError):
    pass


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("this checkpoint has no tokenizer files; text prompts need a tokenizer "
                         "(save one next to config.json)")
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    # enable_thinking=False is Qwen3's switch for the papers' non-thinking mode; other templates
    # ignore unknown variables.
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        enable_thinking=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def eos_token_ids(tokenizer, generation_eos: int | list[int] | None = None) -> list[int]:
    """The tokenizer's EOS plus the generation config's (chat models end turns with e.g.
    <|im_end|> while <|endoftext|> is the tokenizer EOS)."""
    ids = []
    for value in (tokenizer.eos_token_id, generation_eos):
        for i in (value if isinstance(value, list) else [value]):
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("tokenizer defines no EOS token; cannot decide when generation ends")
    return ids


def check_same_vocabulary(llm_tokenizer, slm_tokenizer, llm_name: str, slm_name: str) -> int:
    """Models steered token-by-token must share one tokenizer; returns the shared vocab size.

    Embedding matrices may be padded differently (Qwen: 151936 vs 152064 rows) -- that is fine,
    logits are cut to the tokenizer length -- but different token strings are not."""
    if llm_tokenizer is slm_tokenizer:
        return len(llm_tokenizer)
    a, b = llm_tokenizer.get_vocab(), slm_tokenizer.get_vocab()
    if a != b:
        only_a = len(set(a.items()) - set(b.items()))
        raise TokenizerMismatchError(
            f"the LLM ({llm_name}) and SLM ({slm_name}) tokenizers differ ({len(a)} vs {len(b)} "
            f"tokens, {only_a} token->id entries not shared). This method steers token "
            "distributions, so both models must share a vocabulary: pick a pair from one model "
            "family (e.g. Qwen2.5-7B-Instruct with Qwen2.5-1.5B-Instruct), or use --method=costeer_map, "
            "costeer_byte or specsteer_cross, which align two tokenizers.")
    return len(a)

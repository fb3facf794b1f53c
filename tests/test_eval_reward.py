"""Reward scoring with a tiny local stand-in for ArmoRM (random weights, built in the test, no hub)."""
from __future__ import annotations

import json

import pytest

from costeer_jax.data import load_task
from costeer_jax.eval.predictions import read_predictions
from costeer_jax.eval.reward import ArmoRMScorer, RewardModelUnavailable, score_responses
from costeer_jax.eval.scoring import Scorers, score_prediction_file

torch = pytest.importorskip("torch")

CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> "
                 "{% endfor %}")
WORDS = ("how do i make tea quickly answer should be as concise verbose creative uplifting possible boil water "
         "steep the leaves pour enjoy a cup of warm sunshine").split()


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A word-level tokenizer with a chat template and a random 2-layer Llama reward head."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny_reward")
    specials = ["[UNK]", "[PAD]", "<|user|>", "<|assistant|>", "<|end|>"]
    vocab = {token: index for index, token in enumerate([*specials, *dict.fromkeys(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         num_labels=1, pad_token_id=vocab["[PAD]"])
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def scorer(tiny_reward_model):
    return ArmoRMScorer(str(tiny_reward_model), device="cpu", dtype="float32", local_files_only=True)


def direct_score(model_dir, prompt: str, response: str) -> float:
    """The same quantity computed without the scorer: chat text -> ids -> first logit."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}], tokenize=False)
    assert text == f"<|user|> {prompt} <|end|> <|assistant|> {response} <|end|> "
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(text.split())])
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def test_scorer_equals_a_direct_forward_pass(scorer, tiny_reward_model):
    prompt = "how do i make tea\nYour answer should be as concise as possible"
    response = "boil water steep the leaves pour enjoy"
    assert scorer.score(prompt, response) == pytest.approx(direct_score(tiny_reward_model, prompt, response), abs=1e-5)


def test_score_depends_on_the_preference_in_the_prompt(scorer):
    response = "boil water steep the leaves"
    scores = {preference: scorer.score(f"how do i make tea\nYour answer should be as {preference} as possible",
                                       response) for preference in ("concise", "verbose", "creative")}
    assert len({round(value, 6) for value in scores.values()}) == 3
    assert score_responses(scorer, ["a", "b"], ["x", "y"]) == [scorer.score("a", "x"), scorer.score("b", "y")]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_responses(scorer, ["a", "b"], ["x"])


def test_unavailable_model_is_a_clear_error(tmp_path):
    with pytest.raises(RewardModelUnavailable, match="--reward_model"):
        ArmoRMScorer(str(tmp_path / "no-such-model"), device="cpu", local_files_only=True)


def test_reward_metric_per_dataset_and_preference(scorer, tmp_path):
    """Mean reward of one helpsteer x preference run, each answer scored with the preference prompt."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "helpsteer.jsonl").write_text("".join(
        json.dumps({"id": i, "input": q}) + "\n"
        for i, q in enumerate(["how do i make tea", "make tea quickly", "tea"])))
    answers = {"0": "boil water", "2": "enjoy a cup of warm sunshine"}
    predictions = tmp_path / "costeer_uplifting.jsonl"
    predictions.write_text("".join(json.dumps({"id": k, "method": "costeer", "output": v, "preference": "uplifting"})
                                   + "\n" for k, v in answers.items()))
    examples = load_task("helpsteer", data_dir, preference="uplifting")
    result = score_prediction_file("helpsteer", examples, read_predictions(predictions), ["reward"],
                                   Scorers(reward_factory=lambda: scorer), "uplifting")
    expected = {key: scorer.score(f"{examples[int(key)].query}\nYour answer should be as uplifting as possible", text)
                for key, text in answers.items()}
    assert result["dataset"] == "helpsteer/uplifting" and result["missing_ids"] == ["1"]
    assert {row["id"]: row["reward"] for row in result["per_example"]} == pytest.approx(expected)
    assert result["averages"]["reward"] == pytest.approx(sum(expected.values()) / 2)

"""LoRA adapters at decode time: sft, proxy-tuning and SpecSteer's SLM+ on base + adapter, and
per-row adapters in one batch, each equal to running the merged model."""
from __future__ import annotations

import dataclasses

import jax
import pytest

from costeer_jax.data import Example
from costeer_jax.decoding import methods
from costeer_jax.decoding.runner import Generator
from costeer_jax.models import lora
from costeer_jax.models.loading import load_model

EXAMPLES = [
    Example("a", "Suggest a weekend activity.", "I love birdwatching near lakes. Suggest a weekend activity."),
    Example("b", "Recommend a book.", "I enjoyed Dune. Recommend a book."),
    Example("c", "Plan a short workout for tomorrow morning, please.",
            "I have a bad knee. Plan a short workout for tomorrow morning, please."),
]
CONFIG = lora.LoraConfig(rank=4, alpha=8.0)


def trained_adapter(cfg, seed, config=CONFIG, scale=0.3):
    adapter = lora.init_adapter(jax.random.key(seed), cfg, config)
    leaves, tree = jax.tree.flatten(adapter)
    keys = jax.random.split(jax.random.key(seed + 50), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def setup(tiny_chat_models, tmp_path_factory):
    llm, slm = load_model(str(tiny_chat_models["llm"])), load_model(str(tiny_chat_models["slm"]))
    root = tmp_path_factory.mktemp("adapters")
    adapters = {}
    for name, seed, config in (("A", 1, CONFIG), ("B", 2, lora.LoraConfig(rank=2, alpha=2.0))):
        a = trained_adapter(slm.cfg, seed, config)
        adapters[name] = (lora.save_adapter(root / name, a, config, "tiny", slm.cfg), a, config)
    return llm, slm, adapters


def adapted(slm, adapter, config, path="A"):
    return dataclasses.replace(slm, name=str(path), adapter=(adapter, config))


def merged(slm, adapter, config):
    return dataclasses.replace(slm, name="merged", params=lora.merge(slm.params, adapter, config, slm.cfg))


def tokens(method, models, examples=EXAMPLES, batch_size=3, **spec):
    speculative = methods.SpeculativeOptions(**spec) if spec else None
    gen = Generator(methods.get_method(method, max_T=4, speculative=speculative), models, max_new_tokens=6,
                    batch_size=batch_size, hyper={"T": 4})
    rows = []
    for i in range(0, len(examples), batch_size):
        rows += gen.run_batch(examples[i:i + batch_size])[0]
    return {r["id"]: r for r in rows}


def test_sft_and_proxy_tuning_with_an_adapter_equal_the_merged_checkpoint(setup):
    llm, slm, adapters = setup
    _, a, config = adapters["A"]
    with_adapter = {methods.LLM: llm, methods.SLM: slm, methods.SLM_SFT: adapted(slm, a, config)}
    with_merged = {methods.LLM: llm, methods.SLM: slm, methods.SLM_SFT: merged(slm, a, config)}
    for method in ("sft", "proxy_tuning"):
        got, want = tokens(method, with_adapter), tokens(method, with_merged)
        assert {k: r["token_ids"] for k, r in got.items()} == {k: r["token_ids"] for k, r in want.items()}, method
    # The adapter changes what the SLM says (otherwise the equality above would prove nothing).
    plain = tokens("slm_w", {methods.SLM: slm})
    assert any(plain[k]["token_ids"] != got[k]["token_ids"] for k in plain)


def test_proxy_tuning_runs_base_and_adapter_rows_in_one_forward(setup):
    llm, slm, adapters = setup
    _, a, config = adapters["A"]
    gen = Generator(methods.get_method("proxy_tuning"), {methods.LLM: llm, methods.SLM: slm,
                                                        methods.SLM_SFT: adapted(slm, a, config)},
                    max_new_tokens=2, batch_size=1)
    assert gen.layout.groups == (("llm",), ("sft_w", "slm_w"))  # one group: the SLM's weights read once


def test_per_row_adapters_give_each_row_its_own_merged_model(setup):
    llm, slm, adapters = setup
    (_, a, ca), (path_b, b, cb) = adapters["A"], adapters["B"]
    mixed = [dataclasses.replace(EXAMPLES[0]),  # the model's adapter (A)
             dataclasses.replace(EXAMPLES[1], meta={"adapter": str(path_b)}),
             dataclasses.replace(EXAMPLES[2], meta={"adapter": "none"}),
             dataclasses.replace(EXAMPLES[1], id="b_with_a")]
    got = tokens("sft", {methods.SLM_SFT: adapted(slm, a, ca)}, mixed, batch_size=4)
    alone = {"a": tokens("slm_w", {methods.SLM: merged(slm, a, ca)}, EXAMPLES[:1], 1)["a"],
             "b": tokens("slm_w", {methods.SLM: merged(slm, b, cb)}, EXAMPLES[1:2], 1)["b"],
             "c": tokens("slm_w", {methods.SLM: slm}, EXAMPLES[2:], 1)["c"],
             "b_with_a": tokens("slm_w", {methods.SLM: merged(slm, a, ca)}, [mixed[3]], 1)["b_with_a"]}
    for k, want in alone.items():
        assert got[k]["token_ids"] == want["token_ids"], k
    assert got["b"]["adapter"] == str(path_b) and "adapter" not in got["c"] and got["a"]["adapter"] == "A"
    assert got["b"]["token_ids"] != got["b_with_a"]["token_ids"]  # the two adapters differ


@pytest.mark.parametrize("method,drafter", [("specsteer", "sft_wo"), ("specsteer", "sft_w"), ("sd", "sft_wo")])
def test_speculative_slm_plus_adapter_equals_a_fine_tuned_checkpoint(setup, method, drafter):
    llm, slm, adapters = setup
    _, a, config = adapters["A"]
    spec = {"specsteer_drafter": drafter} if method == "specsteer" else {"sd_drafter": drafter}
    got = tokens(method, {methods.LLM: llm, methods.SLM: slm, methods.SLM_SFT: adapted(slm, a, config)}, **spec)
    want = tokens(method, {methods.LLM: llm, methods.SLM: slm, methods.SLM_SFT: merged(slm, a, config)}, **spec)
    base = tokens(method, {methods.LLM: llm, methods.SLM: slm},
                  **({"specsteer_drafter": drafter.replace("sft", "slm")} if method == "specsteer"
                     else {"sd_drafter": drafter.replace("sft", "slm")}))
    for k in want:
        assert got[k]["token_ids"] == want[k]["token_ids"], k
        assert got[k]["drafted_tokens"] == want[k]["drafted_tokens"]
    if method == "sd":  # exact: greedy SD says what the LLM says, whatever drafts
        llm_alone = tokens("llm_wo", {methods.LLM: llm})
        assert all(got[k]["token_ids"] == llm_alone[k]["token_ids"] for k in got)
    else:
        assert any(got[k]["token_ids"] != base[k]["token_ids"] for k in got)

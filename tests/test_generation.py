"""Generation end to end on tiny random models: batch invariance for every method, privacy of
the LLM streams, resumable output, NaN reporting and CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from costeer_jax.data import Example
from costeer_jax.decoding import methods
from costeer_jax.decoding.runner import Generator, Sampling, build_layout, generate_to_file
from costeer_jax.models.loading import load_model

from conftest import REPO_ROOT

EXAMPLES = [
    Example("a", "Suggest a weekend activity.", "I love birdwatching near lakes. Suggest a weekend activity."),
    Example("b", "Recommend a book.", "I enjoyed Dune. Recommend a book."),
    Example("c", "Plan a short workout for tomorrow morning, please.", "I have a bad knee. Plan a short workout for tomorrow morning, please."),
]


@pytest.fixture(scope="module")
def models(tiny_chat_models):
    loaded = {k: load_model(str(v)) for k, v in tiny_chat_models.items()}
    return {methods.LLM: loaded["llm"], methods.SLM: loaded["slm"], methods.SLM_SFT: loaded["sft"]}


def run(method_name, models, batch_size, examples=EXAMPLES, sampling=Sampling(), ada_stop_on_streak=False, **kw):
    gen = Generator(methods.get_method(method_name, max_T=4, ada_stop_on_streak=ada_stop_on_streak), models,
                    max_new_tokens=6,
                    batch_size=batch_size, sampling=sampling, hyper={"T": 4, "tau": 1e-7, "k_consecutive": 2, **kw})
    rows = []
    for i in range(0, len(examples), batch_size):
        rows += gen.run_batch(examples[i:i + batch_size])[0]
    return {r["id"]: r for r in rows}


# costeer_map/costeer_byte across two tokenizers: tests/test_cross_vocab.py (batch invariance,
# and costeer_map == costeer on one tokenizer); specsteer_cross runs here on one tokenizer.
@pytest.mark.parametrize("method_name", [m for m in methods.METHOD_NAMES if m not in ("costeer_map", "costeer_byte")])
def test_batch_invariance_every_method(models, method_name):
    batched = run(method_name, models, batch_size=3)
    single = run(method_name, models, batch_size=1)
    for ex in EXAMPLES:
        assert batched[ex.id]["token_ids"] == single[ex.id]["token_ids"], ex.id
        assert len(batched[ex.id]["token_ids"]) == 6 or batched[ex.id]["token_ids"][-1] == 2


def test_sampling_is_batch_invariant_and_seeded(models):
    # top_p < 1 on a near-uniform random model makes the nucleus edge float-noise sensitive.
    s = Sampling(greedy=False, temperature=0.7, top_p=1.0, seed=3)
    a = run("costeer", models, 3, sampling=s)
    b = run("costeer", models, 1, sampling=s)
    c = run("costeer", models, 3, sampling=Sampling(greedy=False, temperature=0.7, top_p=1.0, seed=4))
    assert all(a[k]["token_ids"] == b[k]["token_ids"] for k in a)
    assert any(a[k]["token_ids"] != c[k]["token_ids"] for k in a)


def test_costeer_differs_from_llm_and_ada_counts_steering(models):
    llm = run("llm_wo", models, 3)
    costeer = run("costeer", models, 3, beta=5.0)
    assert any(llm[k]["token_ids"] != costeer[k]["token_ids"] for k in llm)
    assert all(r["steered_tokens"] == len(r["token_ids"]) for r in costeer.values())
    ada = run("ada_costeer", models, 3)  # tau tiny, k=2: steers exactly the first 2 tokens
    assert all(r["steered_tokens"] == 2 for r in ada.values())


def test_ada_stop_on_streak_hands_exactly_the_streak_completing_step_to_the_llm(models):
    """tau tiny, k=2: every step is confident, so the streak completes at step 1. By default that
    step is still steered (2 steered tokens); with the option it is the LLM's (1), and the run is
    then the default rule with k=1, token for token. Step 0 is the same either way."""
    default = run("ada_costeer", models, 3, beta=5.0)
    stop = run("ada_costeer", models, 3, beta=5.0, ada_stop_on_streak=True)
    one = run("ada_costeer", models, 3, beta=5.0, k_consecutive=1)
    assert all(r["steered_tokens"] == 2 for r in default.values())
    assert all(r["steered_tokens"] == 1 for r in stop.values())
    for k in default:
        assert stop[k]["token_ids"] == one[k]["token_ids"]
        assert stop[k]["token_ids"][0] == default[k]["token_ids"][0]
    assert any(stop[k]["token_ids"] != default[k]["token_ids"] for k in default)  # the step matters here


def test_llm_streams_never_see_private_context(models):
    """By construction: every stream run on the LLM's weights is prompted with the bare query."""
    for name in methods.METHOD_NAMES:
        method = methods.get_method(name)
        layout, group_models = build_layout(method, models)
        gen = Generator(method, models, max_new_tokens=2, batch_size=1)
        for group, model in zip(layout.groups, group_models):
            if model is not models[methods.LLM] or name == "llm_w":
                continue
            for stream in group:
                ids = gen.stream_ids(EXAMPLES[0])[stream]
                assert ids == gen.stream_ids(Example("x", EXAMPLES[0].query, EXAMPLES[0].query))[stream]
                private = models[methods.LLM].tokenizer.encode("birdwatching")
                assert not any(ids[i:i + len(private)] == private for i in range(len(ids)))


def test_self_pair_shares_one_forward_and_matches_separate_models(models, tiny_chat_models):
    same = {methods.LLM: models[methods.LLM], methods.SLM: models[methods.LLM]}
    layout, groups = build_layout(methods.get_method("costeer"), same)
    assert len(groups) == 1 and layout.aliases == (("slm_wo", "llm"),)
    # A distinct copy of the same weights (two groups, no aliasing) gives the same tokens.
    copy = load_model(str(tiny_chat_models["llm"]))
    separate = {methods.LLM: models[methods.LLM], methods.SLM: copy}
    assert len(build_layout(methods.get_method("costeer"), separate)[1]) == 2
    a, b = run("costeer", same, 3), run("costeer", separate, 3)
    assert all(a[k]["token_ids"] == b[k]["token_ids"] for k in a)


def test_resume_after_interruption_gives_same_file_content(models, tmp_path):
    gen = Generator(methods.get_method("light_costeer"), models, max_new_tokens=5, batch_size=1)
    full = tmp_path / "full.jsonl"
    generate_to_file(gen, EXAMPLES, full, progress=False)
    partial = tmp_path / "partial.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    partial.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-write
    figures = generate_to_file(gen, EXAMPLES, partial, progress=False)
    assert figures.examples == 2
    rows = lambda p: sorted(p.read_text().splitlines())
    assert rows(partial) == rows(full)


def test_nonfinite_logits_are_reported_per_row(models):
    broken = dict(models)
    llm = models[methods.LLM]
    params = jax.tree.map(lambda x: x, llm.params)
    params["final_norm"] = params["final_norm"].at[0].set(np.nan)
    broken[methods.LLM] = type(llm)(llm.name, llm.cfg, params, llm.tokenizer, llm.generation_eos)
    rows, stats = Generator(methods.get_method("llm_wo"), broken, max_new_tokens=4,
                            batch_size=2).run_batch(EXAMPLES[:2])
    assert stats["nonfinite_rows"] == 2 and all(r["error"] == "nonfinite_logits" for r in rows)
    assert all(r["token_ids"] == [] for r in rows)


def test_vocabulary_mismatch_is_a_clear_error(models, tiny_checkpoints):
    from costeer_jax.models.chat import TokenizerMismatchError
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tmodels

    other = dict(models)
    slm = models[methods.SLM]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tmodels.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    other[methods.SLM] = type(slm)(slm.name, slm.cfg, slm.params, tok, None)
    with pytest.raises(TokenizerMismatchError, match="share a vocabulary.*--method=costeer_map"):
        Generator(methods.get_method("costeer"), other, max_new_tokens=2, batch_size=1)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def test_cli_persistent_compilation_cache(tiny_chat_models, tmp_path):
    """The first run fills --compilation_cache_dir; a second run with the same shapes compiles
    nothing new (it loads every program from the cache) and writes the same tokens."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query}) + "\n"
                               for e in EXAMPLES))
    cache = tmp_path / "xla"
    common = [f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}", f"--prompts_file={prompts}",
              "--method=costeer", "--max_new_tokens=4", "--batch_size=2", "--progress=false",
              f"--compilation_cache_dir={cache}"]
    first = cli(*common, f"--output={tmp_path / 'first.jsonl'}")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert any("decode" in name for name in entries), entries
    second = cli(*common, f"--output={tmp_path / 'second.jsonl'}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == entries
    tokens = lambda name: {r["id"]: r["token_ids"] for r in map(json.loads, (tmp_path / name).read_text().splitlines())}
    assert tokens("first.jsonl") == tokens("second.jsonl")
    # --compilation_cache_dir= (off) runs in tests/test_context_options.py


def test_cli_end_to_end_and_errors(tiny_chat_models, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query}) + "\n"
                               for e in EXAMPLES))
    out = tmp_path / "o.jsonl"
    common = [f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}",
              f"--prompts_file={prompts}", f"--output={out}", "--max_new_tokens=4", "--batch_size=2",
              "--T=3", "--progress=false"]
    r = cli("--method=costeer", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("examples", "tokens", "load_seconds", "compile_seconds", "generate_seconds", "tokens_per_s"):
        assert key in figures
    assert figures["examples"] == 3 and figures["steered_fraction"] == 1.0
    assert abs(figures["tokens_per_s"] - figures["tokens"] / figures["generate_seconds"]) < 0.05 * figures["tokens_per_s"] + 0.01
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"a", "b", "c"} and all(r["config"]["T"] == 3 for r in rows)
    again = cli("--method=costeer", *common)  # resumable: nothing left to do
    assert json.loads(again.stdout.strip().splitlines()[-1])["examples"] == 0

    missing = cli("--method=llm_wo", f"--llm={tmp_path / 'nope'}", f"--prompts_file={prompts}",
                  f"--output={tmp_path / 'x.jsonl'}")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    bad_method = cli("--method=nonsense", f"--prompts_file={prompts}", f"--output={tmp_path / 'y.jsonl'}")
    assert bad_method.returncode != 0 and "llm_wo" in bad_method.stderr
    no_file = cli(f"--prompts_file={tmp_path / 'none.jsonl'}", f"--output={tmp_path / 'z.jsonl'}")
    assert no_file.returncode != 0 and "none.jsonl" in no_file.stderr

"""Models of different tokenizers (issue 10): the byte alignment of the real SmolLM2 and Qwen2.5
vocabularies, CoSteer_map and CoSteer_byte against a host-side NumPy transcription of B.11.1 /
B.11.2 (one row at a time, no cache, transformers' own forward), batch invariance, and the
degenerate one-tokenizer cases."""
from __future__ import annotations

import numpy as np
import pytest

from costeer_jax.data import Example
from costeer_jax.decoding import methods
from costeer_jax.decoding.runner import Generator, Sampling
from costeer_jax.models.chat import chat_prompt_ids, eos_token_ids
from costeer_jax.models.vocab_alignment import align_vocabularies, compute_alignment
from costeer_jax.steering.cross_vocab_host import (COMMIT, host_decode, host_specsteer_cross, np_byte_dist,
                                                   np_candidates, np_ftrl, np_live, np_log_softmax)

HYPER = {"alpha": 2.0, "beta": 1.0, "lam": 2.0, "eta": 10.0, "T": 4}
EXAMPLES = [
    Example("a", "Suggest a weekend activity.", "I love birdwatching near lakes. Suggest a weekend activity."),
    Example("b", "Recommend a book, café owner?", "I enjoyed Dune and Über-long sagas. Recommend a book, café owner?"),
    Example("c", "Plan a short workout.", "I have a bad knee. Plan a short workout."),
]
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def tokenizers(tiny_cross_models):
    from transformers import AutoTokenizer

    return {k: AutoTokenizer.from_pretrained(v) for k, v in tiny_cross_models.items()}


@pytest.fixture(scope="module")
def models(tiny_cross_models):
    from costeer_jax.models.loading import load_model

    return {k: load_model(str(v)) for k, v in tiny_cross_models.items()}


def alignment_of(tokenizers, llm="qwen", slm="smol"):
    a, b = tokenizers[llm], tokenizers[slm]
    return compute_alignment(a, b, eos_token_ids(a), eos_token_ids(b))


# -- alignment ----------------------------------------------------------------------------------

def test_token_bytes_are_exact_and_the_real_intersection(tokenizers):
    al = alignment_of(tokenizers)
    text = "Héllo wörld, 日本語 and 𓀀ꙮ𝔘 🙂 — café\n\tdone"
    for tok, table in ((tokenizers["qwen"], al.llm_bytes), (tokenizers["smol"], al.slm_bytes)):
        ids = tok.encode(text, add_special_tokens=False)
        # Some of these tokens hold part of a UTF-8 character: only their bytes concatenate.
        assert b"".join(table.bytes_of(i) for i in ids) == text.encode("utf-8")
        assert any(not _is_utf8(table.bytes_of(i)) for i in ids)
    # Measured on the real vocabularies (BUILD_NOTES): 39234 normal tokens shared by bytes,
    # plus <|endoftext|>, <|im_start|>, <|im_end|> spelled alike.
    assert al.normal_shared == 39234 and al.size == 39237
    eos = list(zip(al.llm_ids[al.eos_shared], al.slm_ids[al.eos_shared]))
    assert eos == [(151645, 2)]
    for i in range(0, al.normal_shared, 997):
        assert al.llm_bytes.bytes_of(al.llm_ids[i]) == al.slm_bytes.bytes_of(al.slm_ids[i])


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_alignment_is_cached_per_pair(tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("COSTEER_JAX_CACHE", str(tmp_path))
    a, b = tokenizers["qwen"], tokenizers["smol"]
    first = align_vocabularies(a, b, eos_token_ids(a), eos_token_ids(b))
    files = list((tmp_path / "alignments").glob("*.npz"))
    assert len(files) == 1
    again = align_vocabularies(a, b, eos_token_ids(a), eos_token_ids(b))
    np.testing.assert_array_equal(first.llm_ids, again.llm_ids)
    np.testing.assert_array_equal(first.slm_bytes.table, again.slm_bytes.table)
    files[0].write_bytes(b"torn")  # a corrupt cache file is recomputed, not an error
    np.testing.assert_array_equal(align_vocabularies(a, b, eos_token_ids(a), eos_token_ids(b)).slm_ids, first.slm_ids)
    reverse = align_vocabularies(b, a, eos_token_ids(b), eos_token_ids(a))
    assert reverse.size == first.size and len(list((tmp_path / "alignments").glob("*.npz"))) == 2


def reference_decode(kind, torch_models, tokenizers, al, example, llm="qwen", slm="smol"):
    """The host transcription with transformers' own forward (full sequence, no cache)."""
    import torch

    def next_logits(role, ids):
        with torch.no_grad():
            return torch_models[llm if role == "llm" else slm](torch.tensor([ids])).logits[0, -1].double().numpy()

    prompts = {"llm": chat_prompt_ids(tokenizers[llm], example.query),
               "slm_wo": chat_prompt_ids(tokenizers[slm], example.query),
               "slm_w": chat_prompt_ids(tokenizers[slm], example.personalized_query)}
    return host_decode(kind, next_logits, al, prompts, NEW_TOKENS, HYPER)


def generate(method_name, models, llm, slm, batch_size, sampling=Sampling()):
    gen = Generator(methods.get_method(method_name, max_T=4), {methods.LLM: models[llm], methods.SLM: models[slm]},
                    max_new_tokens=NEW_TOKENS, batch_size=batch_size, sampling=sampling, hyper=HYPER)
    rows = []
    for i in range(0, len(EXAMPLES), batch_size):
        rows += gen.run_batch(EXAMPLES[i:i + batch_size])[0]
    return {r["id"]: r for r in rows}


@pytest.mark.parametrize("kind", ["map", "byte"])
def test_greedy_tokens_equal_the_host_transcription(kind, models, tokenizers, tiny_cross_models):
    from transformers import AutoModelForCausalLM

    torch_models = {k: AutoModelForCausalLM.from_pretrained(v).eval() for k, v in tiny_cross_models.items()}
    al = alignment_of(tokenizers)
    ours = generate(f"costeer_{kind}", models, "qwen", "smol", batch_size=3)
    for ex in EXAMPLES[:2]:
        assert ours[ex.id]["token_ids"] == reference_decode(kind, torch_models, tokenizers, al, ex), ex.id
        assert ours[ex.id]["output"] == tokenizers["qwen"].decode(ours[ex.id]["token_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("kind", [pytest.param("map", marks=pytest.mark.slow), "byte"])
def test_batch_invariance_across_tokenizers(kind, models):
    """Sampled (per-row keys); greedy batch 3 is checked row by row against the per-row host
    transcription above."""
    for sampling in (Sampling(greedy=False, temperature=0.8, seed=5),):
        batched = generate(f"costeer_{kind}", models, "smol", "qwen", batch_size=3, sampling=sampling)
        single = generate(f"costeer_{kind}", models, "smol", "qwen", batch_size=1, sampling=sampling)
        for ex in EXAMPLES:
            assert batched[ex.id]["token_ids"] == single[ex.id]["token_ids"], (sampling, ex.id)


# -- the byte space on random logits -----------------------------------------------------------

def _random_logits(rng, size, scale=3.0):
    return (scale * rng.standard_normal((size,))).astype(np.float32)


def _prefixes(table, rng, n=6):
    """Byte prefixes that candidates start with: the empty one and beginnings of random tokens."""
    normal = np.flatnonzero(table.lengths > 2)
    out = [b""]
    for t in rng.choice(normal, n - 1, replace=False):
        b = table.bytes_of(int(t))
        out.append(b[:rng.integers(1, len(b))])
    return out


def test_byte_distributions_equal_numpy_and_sum_to_one(tokenizers):
    import jax.numpy as jnp

    from costeer_jax.steering import cross_vocab as cv

    al = alignment_of(tokenizers)
    rng = np.random.default_rng(0)
    for table in (al.llm_bytes, al.slm_bytes):
        tables = cv.ByteTables(jnp.asarray(table.table), jnp.asarray(table.lengths))
        logits = _random_logits(rng, table.lengths.shape[0])
        for prefix in _prefixes(table, rng):
            ok, _ = np_candidates(table, prefix)
            keys = cv.next_byte_keys(tables, jnp.asarray([len(prefix)], jnp.int32))
            ours = np.asarray(cv.byte_log_probs(jnp.asarray(logits)[None], jnp.asarray(ok)[None], keys)[0])
            want = np_byte_dist(logits, table, prefix)
            np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(want))
            np.testing.assert_allclose(ours[np.isfinite(want)], want[np.isfinite(want)], atol=1e-5)
            assert abs(np.exp(ours[np.isfinite(ours)]).sum() - 1) < 1e-5


def test_byte_factorisation_gives_back_each_token_probability(tokenizers):
    """Walking a token's bytes and committing multiplies to that token's softmax probability."""
    import jax.numpy as jnp

    from costeer_jax.steering import cross_vocab as cv

    table = alignment_of(tokenizers).slm_bytes
    tables = cv.ByteTables(jnp.asarray(table.table), jnp.asarray(table.lengths))
    rng = np.random.default_rng(1)
    logits = _random_logits(rng, table.lengths.shape[0])
    want = np_log_softmax(np.where(table.lengths >= 0, logits, -np.inf))
    for t in rng.choice(np.flatnonzero(table.lengths > 0), 40, replace=False):
        b = table.bytes_of(int(t))
        cand = cv.initial_candidates(tables, 1)
        total = 0.0
        for L, outcome in enumerate(list(b) + [COMMIT]):
            keys = cv.next_byte_keys(tables, jnp.asarray([L], jnp.int32))
            total += float(cv.byte_log_probs(jnp.asarray(logits)[None], cand, keys)[0, outcome])
            cand = cand & (keys == outcome)
        assert abs(total - want[t]) < 1e-4, (t, b)


def test_fused_byte_policy_equals_literal_ftrl(tokenizers):
    import jax.numpy as jnp

    from costeer_jax.steering import cross_vocab as cv

    al = alignment_of(tokenizers)
    rng = np.random.default_rng(2)
    logits = [_random_logits(rng, al.llm_bytes.lengths.shape[0])] + [
        _random_logits(rng, al.slm_bytes.lengths.shape[0]) for _ in range(2)]
    for prefix in _prefixes(al.llm_bytes, rng):
        if not np_live(al, prefix).any():
            continue  # a prefix of an LLM-only token: the walk never enters it
        d = [np_byte_dist(logits[0], al.llm_bytes, prefix), np_byte_dist(logits[1], al.slm_bytes, prefix),
             np_byte_dist(logits[2], al.slm_bytes, prefix)]
        live = np_live(al, prefix)
        feasible = live & np.all([np.isfinite(x) for x in d], axis=0)
        ours = np.asarray(cv.fused_byte_policy(*(jnp.asarray(x, jnp.float32)[None] for x in d), jnp.asarray(live)[None],
                                               **{k: v for k, v in HYPER.items()}, max_T=4)[0])
        want = np_ftrl(*(x[feasible] for x in d), **HYPER)
        assert np.all(np.isneginf(ours[~feasible]))
        np.testing.assert_allclose(ours[feasible], want, atol=1e-5)


def test_byte_walk_with_one_model_follows_its_own_confident_choice(tokenizers):
    """Delta = 0 (SLM- = SLM+): the policy is the LLM's own byte distribution; where the LLM's
    top token holds most of the mass, the byte walk commits exactly that token."""
    import jax.numpy as jnp

    from costeer_jax.steering import cross_vocab as cv

    al = alignment_of(tokenizers)
    llm_shared = np.full(al.llm_bytes.lengths.shape, -1, np.int32)
    llm_shared[al.llm_ids] = np.arange(al.size)
    bridge = cv.ByteBridge(jnp.asarray(al.llm_ids), cv.ByteTables(jnp.asarray(al.llm_bytes.table),
                                                                  jnp.asarray(al.llm_bytes.lengths)),
                           cv.ByteTables(jnp.asarray(al.slm_bytes.table), jnp.asarray(al.slm_bytes.lengths)),
                           jnp.asarray(llm_shared))
    rng = np.random.default_rng(3)
    targets = rng.choice(al.normal_shared, 4, replace=False)
    llm = rng.standard_normal((4, al.llm_bytes.lengths.shape[0])).astype(np.float32)
    llm[np.arange(4), al.llm_ids[targets]] = 20.0  # ~e^20 / 150k: the top token holds > 99% of the mass
    slm = rng.standard_normal((4, al.slm_bytes.lengths.shape[0])).astype(np.float32)
    hyper = {k: jnp.full((4,), v, jnp.int32 if k == "T" else jnp.float32) for k, v in HYPER.items()}
    choice, walked = cv.costeer_byte_step(jnp.asarray(llm), jnp.asarray(slm), jnp.asarray(slm), bridge, hyper, 4)
    np.testing.assert_array_equal(np.asarray(choice), targets)
    np.testing.assert_array_equal(np.asarray(walked), al.llm_bytes.lengths[al.llm_ids[targets]] + 1)


# -- one tokenizer on both sides ------------------------------------------------------------------

def test_costeer_map_equals_costeer_with_one_tokenizer(tiny_chat_models):
    from costeer_jax.models.loading import load_model

    pair = {methods.LLM: load_model(str(tiny_chat_models["llm"])), methods.SLM: load_model(str(tiny_chat_models["slm"]))}
    rows = {}
    for name in ("costeer", "costeer_map"):
        gen = Generator(methods.get_method(name, max_T=4), pair, max_new_tokens=6, batch_size=3, hyper=HYPER)
        rows[name] = {r["id"]: r["token_ids"] for r in gen.run_batch(EXAMPLES)[0]}
    assert rows["costeer"] == rows["costeer_map"]


def test_copy_guard_on_shared_tokens(models):
    """costeer_map's guard works on the shared tokens of the SLM's tokenization of the context.
    With beta=0 the output ignores the context, so a context that contains the unguarded output
    is copied unless guarded; guarded, no live context trigram is ever completed."""
    pair = {methods.LLM: models["qwen"], methods.SLM: models["smol"]}
    hyper = {**HYPER, "beta": 0.0}
    plain = Generator(methods.get_method("costeer_map", max_T=4), pair, max_new_tokens=8, batch_size=1, hyper=hyper)
    first = plain.run_batch([EXAMPLES[0]])[0][0]
    copied = Example("copy", EXAMPLES[0].query, f"My notes: {first['output']}. {EXAMPLES[0].query}")
    assert plain.run_batch([copied])[0][0]["token_ids"] == first["token_ids"]
    guarded = Generator(methods.get_method("costeer_map", max_T=4), pair, max_new_tokens=8, batch_size=1,
                        hyper=hyper, copy_guard=3)
    out = guarded.run_batch([copied])[0][0]["token_ids"]
    assert out != first["token_ids"]
    guard = guarded._guard([copied])
    to_shared = {int(t): i for i, t in enumerate(guarded.alignment.llm_ids)}
    ids = [to_shared[t] for t in out]
    windows = {(tuple(p), int(n)) for p, n, live in zip(np.asarray(guard.prefixes[0]), np.asarray(guard.next_tokens[0]),
                                                        np.asarray(guard.live[0])) if live}
    assert windows
    assert not any((tuple(ids[i:i + 2]), ids[i + 2]) in windows for i in range(len(ids) - 2))


def test_copy_guard_is_refused_for_the_byte_walk():
    from costeer_jax.decoding.runner import check_copy_guard

    for name in ("costeer_byte", "specsteer_cross"):
        with pytest.raises(ValueError, match=f"not implemented for {name}"):
            check_copy_guard(name, 8)
    check_copy_guard("costeer_map", 8)


def test_per_row_hyperparameters_in_one_batch(models):
    """One batch mixing an unsteered row (beta=0: the LLM alone) and a strongly steered
    LightCoSteer row (T=1), as a sweep runs them, equals each configuration run alone."""
    pair = {methods.LLM: models["qwen"], methods.SLM: models["smol"]}
    gen = Generator(methods.get_method("costeer_byte", max_T=4), pair, max_new_tokens=NEW_TOKENS, batch_size=2,
                    hyper=HYPER)
    rows = [{**HYPER, "beta": 0.0}, {**HYPER, "T": 1, "beta": 30.0, "lam": 0.1}]
    mixed = gen.run_batch([EXAMPLES[0], EXAMPLES[0]], hyper_rows=rows)[0]
    for row, hyper in zip(mixed, rows):
        alone = gen.run_batch([EXAMPLES[0], EXAMPLES[0]], hyper_rows=[hyper, hyper])[0][0]
        assert row["token_ids"] == alone["token_ids"]
    assert mixed[0]["token_ids"] != mixed[1]["token_ids"]


def test_cli_runs_a_cross_family_pair_and_resumes(tiny_cross_models, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query})
                               + "\n" for e in EXAMPLES[:2]))
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--method=costeer_map",
           f"--llm={tiny_cross_models['qwen']}", f"--slm={tiny_cross_models['smol']}", f"--prompts_file={prompts}",
           "--max_new_tokens=4", "--batch_size=2", f"--output={out}", "--progress=false", "--record_cloud_view"]
    subprocess.run(cmd + ["--limit=1"], check=True, capture_output=True)
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(r["cloud_view"] == r["token_ids"] and r["token_ids"] for r in rows)
    bad = subprocess.run([c.replace("costeer_map", "costeer_byte") for c in cmd] + ["--copy_guard=8"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not implemented for costeer_byte" in bad.stderr


# -- cross-architecture SpecSteer ----------------------------------------------------------------

@pytest.mark.parametrize("llm,slm", [("qwen", "smol"), pytest.param("smol", "qwen", marks=pytest.mark.slow)])
def test_specsteer_cross_equals_the_host_transcription(llm, slm, models, tokenizers, tiny_cross_models):
    """Greedy tokens of the host-stepped kernel equal A.4 run per row on full forwards. Row a's
    lambda = 1e-30 lets chunks of these random models pass, row b's 0.5 rejects most: both
    branches, accept and recover, run in one batch."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_models = {k: AutoModelForCausalLM.from_pretrained(v).eval() for k, v in tiny_cross_models.items()}
    lams = [1e-30, 0.5]
    pair = {methods.LLM: models[llm], methods.SLM: models[slm]}
    gen = Generator(methods.get_method("specsteer_cross"), pair, max_new_tokens=8, batch_size=2)
    rows, stats = gen.run_batch(EXAMPLES[:2], hyper_rows=[{"spec_lambda": lam} for lam in lams])
    al = gen.alignment

    def next_logits(role, ids):
        with torch.no_grad():
            model = torch_models[llm if role == "llm" else slm]
            return model(torch.tensor([ids])).logits[0, -1].double().numpy()

    encode = lambda text: tokenizers[llm].encode(text, add_special_tokens=False)
    for row, ex, lam in zip(rows, EXAMPLES[:2], lams):
        prompts = {"llm": chat_prompt_ids(tokenizers[llm], ex.query),
                   "slm_wo": chat_prompt_ids(tokenizers[slm], ex.query),
                   "slm_w": chat_prompt_ids(tokenizers[slm], ex.personalized_query)}
        want = host_specsteer_cross(next_logits, al, prompts, encode, 4, lam, 1.0, 8)
        assert row["token_ids"] == want, (llm, ex.id)
    assert stats["accepted_tokens"] > 0 and stats["recovered_tokens"] > 0, stats


def test_specsteer_cross_batch_invariance(models):
    pair = {methods.LLM: models["qwen"], methods.SLM: models["smol"]}
    for sampling in (Sampling(greedy=False, temperature=0.8, seed=2),):  # greedy: the transcription test
        out = {}
        for batch in (3, 1):
            gen = Generator(methods.get_method("specsteer_cross"), pair, max_new_tokens=6, batch_size=batch,
                            sampling=sampling, hyper={"spec_lambda": 1e-12})
            rows = []
            for i in range(0, 3, batch):
                rows += gen.run_batch(EXAMPLES[i:i + batch])[0]
            out[batch] = {r["id"]: r["token_ids"] for r in rows}
        assert out[3] == out[1], sampling


@pytest.mark.slow  # per-row hyperparameters in one batch are in the default suite (above)
def test_sweep_cli_batches_a_grid_across_tokenizers(tiny_cross_models, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "input": EXAMPLES[0].query,
                                   "personalized_input": EXAMPLES[0].personalized_query}) + "\n")
    out = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "sweep.py"), "--method=costeer_byte", "--grid=T=1,4",
         f"--llm={tiny_cross_models['smol']}", f"--slm={tiny_cross_models['qwen']}", f"--prompts_file={prompts}",
         "--max_new_tokens=3", "--batch_size=2", f"--output_dir={out}", "--progress=false"],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 2 and all(len(f.read_text().splitlines()) == 1 for f in files)


def test_specsteer_cross_stops_a_row_whose_slm_cache_is_full(models, capsys):
    """The budget counts LLM tokens; the edge's cache fills by SLM tokens. A row that fills it
    stops with a warning instead of writing past the cache."""
    import jax.numpy as jnp

    from costeer_jax.decoding import cross_speculative, engine
    from costeer_jax.decoding.methods import hyper_arrays

    pair = {methods.LLM: models["qwen"], methods.SLM: models["smol"]}
    gen = Generator(methods.get_method("specsteer_cross"), pair, max_new_tokens=16, batch_size=1)
    ids = gen.stream_ids(EXAMPLES[0])
    prompts = {s: engine.Prompt(jnp.asarray([ids[s]], jnp.int32), jnp.asarray([len(ids[s])], jnp.int32)) for s in ids}
    keys, _, temperature, top_p = gen._sampling_args([EXAMPLES[0]])
    room = len(ids["slm_w"]) + 4 + 1 + 3  # one iteration's drafts, and a little
    result = cross_speculative.decode(
        gen.models[methods.LLM], gen.models[methods.SLM], gen.alignment, gen.bridge.aux, prompts,
        hyper_arrays(gen.method, {"spec_lambda": 0.5}, 1), keys, temperature, top_p, num_draft=4, max_new_tokens=16,
        greedy=True, cache_lens=(len(ids["llm"]) + 64, room))
    assert 0 < int(result.num_tokens[0]) < 16
    assert "stop early: the SLM's cache" in capsys.readouterr().err

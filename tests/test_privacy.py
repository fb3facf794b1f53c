"""What the cloud sees (the recorded cloud view, per method) and the edge-side copy guard, on tiny
random models behind the real SmolLM2 tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from costeer_jax import privacy
from costeer_jax.data import Example
from costeer_jax.decoding import methods, speculative
from costeer_jax.decoding.runner import Generator, Sampling
from costeer_jax.models import vocab_alignment
from costeer_jax.models.loading import load_model
from costeer_jax.steering import copy_guard

QUERY = "Suggest a weekend activity."
CONTEXTS = ("I love birdwatching near lakes and my dog Rex.", "I am a chess player who lives in Porto.")
EXAMPLES = [Example("a", QUERY, f"{CONTEXTS[0]} {QUERY}"), Example("b", "Recommend a book.", "I enjoyed Dune. Recommend a book."),
            Example("c", "Plan a short workout.", "I have a bad knee. Plan a short workout.")]
MAX_NEW = 8


@pytest.fixture(scope="module")
def models(tiny_chat_models):
    loaded = {k: load_model(str(v)) for k, v in tiny_chat_models.items()}
    return {methods.LLM: loaded["llm"], methods.SLM: loaded["slm"], methods.SLM_SFT: loaded["sft"]}


def run(name, models, examples=EXAMPLES, batch_size=3, guard=0, sampling=Sampling(), record=True,
        guard_ids=None, **hyper):
    gen = Generator(methods.get_method(name, max_T=4), models, max_new_tokens=MAX_NEW, batch_size=batch_size,
                    sampling=sampling, hyper={"T": 4, **hyper}, copy_guard=guard, record_cloud_view=record)
    if guard_ids is not None:  # a guard over given id sequences instead of the tokenized contexts
        gen._guard = lambda padded: copy_guard.build_copy_guard(
            [guard_ids[e.id] for e in padded], [[] for _ in padded], guard)
    rows = []
    for i in range(0, len(examples), batch_size):
        rows += gen.run_batch(examples[i:i + batch_size])[0]
    return {r["id"]: r for r in rows}


def ngrams(ids, n):
    return {tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)}


# ---------------------------------------------------------------------------------------------
# The cloud view

def test_every_method_has_a_cloud_view_definition():
    assert set(privacy.CLOUD_VIEW) == set(methods.METHOD_NAMES)


# The default run keeps one method per kind of view in privacy.CLOUD_VIEW and every kernel with a
# view of its own (llm_wo, the cross-tokenizer ones, each speculative one); the rest run as slow.
DEFAULT_VIEW_METHODS = {"llm_wo", "llm_w", "slm_w", "costeer", "costeer_map", "specsteer", "sd", "specsteer_cross"}


@pytest.mark.parametrize("name", [n if n in DEFAULT_VIEW_METHODS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in methods.METHOD_NAMES])
def test_cloud_view_under_a_perturbed_private_context(models, name):
    """Two private contexts, one query: the recorded view is what the table in privacy.py says,
    and it depends on the context only through committed (or drafted) tokens."""
    views, rows = [], []
    for context in CONTEXTS:
        row = run(name, models, [Example("a", QUERY, f"{context} {QUERY}")], batch_size=1)["a"]
        views.append(row["cloud_view"])
        rows.append(row)
    kind = privacy.CLOUD_VIEW[name]
    for row, view, context in zip(rows, views, CONTEXTS):
        if kind == privacy.NOTHING:
            assert view == [] and row["cloud_view_text"] == ""
        elif kind == privacy.COMMITTED:
            assert view == row["token_ids"]
        elif kind == privacy.PROMPT_AND_COMMITTED:
            assert view[len(view) - len(row["token_ids"]):] == row["token_ids"]
            assert context in row["cloud_view_text"]  # llm_w ships the private context itself
        elif name == "specsteer_cross":  # the drafts' text, re-tokenized by the LLM, + recovered tokens
            assert is_subsequence(row["token_ids"], view)
            recovered = row["recovered_tokens"]
            assert len(view) <= row["llm_calls"] * (2 * speculative_k(row) + 8) + recovered
            llm_bytes = vocab_alignment.token_bytes(models[methods.LLM].tokenizer)
            sizes = [len(llm_bytes.bytes_of(t)) for t in view]
            # uplink_bytes counts the drafts' text: the view's bytes less those of the recovered tokens
            assert sum(sizes) - recovered * max(sizes, default=0) <= row["uplink_bytes"] <= sum(sizes)
            assert row["uplink_bytes"] > 0
        else:  # uplinked drafts + drawn tokens: the committed tokens are a subsequence, in order
            k = speculative_k(row)
            drawn = row["recovered_tokens"] + row["bonus_tokens"]
            assert len(view) <= row["llm_calls"] * k + drawn
            assert len(view) >= row["llm_calls"] * k
            assert is_subsequence(row["token_ids"], view)
            id_bytes = speculative.token_id_bytes(len(models[methods.LLM].tokenizer))
            assert row["uplink_bytes"] == row["llm_calls"] * k * id_bytes  # the accounting counts the same drafts
    if name == "llm_wo":
        assert views[0] == views[1]  # the LLM on the bare query: nothing private can reach it


def speculative_k(row) -> int:
    return row["drafted_tokens"] // row["llm_calls"]


def is_subsequence(small, big) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def test_cloud_view_is_off_by_default(models):
    rows = run("costeer", models, record=False)
    assert all("cloud_view" not in r for r in rows.values())


# ---------------------------------------------------------------------------------------------
# The copy guard

def test_forbidden_tokens_on_a_hand_built_case():
    guard = copy_guard.build_copy_guard([[5, 6, 7, 8, 9]], [[7, 8, 9, 1]], 3, width=4)
    # windows (5,6)->7, (6,7)->8 live; (7,8)->9 is also in the query: not a leak, not forbidden
    for recent, expected in (([5, 6], {7}), ([6, 7], {8}), ([7, 8], set()), ([-1, 5], set()), ([1, 2], set())):
        mask = np.asarray(copy_guard.forbidden(guard, np.asarray([recent], np.int32), 12))[0]
        assert set(np.flatnonzero(mask)) == expected, recent
    assert copy_guard.guard_width([[5, 6, 7, 8, 9]], 3) == 64 and guard.prefixes.shape == (1, 4, 2)
    with pytest.raises(ValueError, match="N must be >= 2"):
        copy_guard.build_copy_guard([[1, 2]], [[]], 1)
    with pytest.raises(ValueError, match="width 2 is below a context's 3 windows"):
        copy_guard.build_copy_guard([[5, 6, 7, 8, 9]], [[]], 3, width=2)


def draft_chunks(name: str, row: dict) -> list[list[int]]:
    """Each iteration's K uplinked drafts, split out of a greedy row's flat cloud view. sd: the
    accepted prefix is where drafts equal the committed tokens (a rejected draft differs from the
    LLM's argmax, which is the committed recovery), then a drawn token (recovery, or bonus after a
    full acceptance) when committed. specsteer runs with lambda huge, so every draft is rejected
    and every iteration is K drafts + 1 recovered token."""
    k, view, committed = speculative_k(row), row["cloud_view"], row["token_ids"]
    if name == "specsteer":
        return [view[i:i + k] for i in range(0, len(view), k + 1)]
    chunks, pos, done = [], 0, 0
    while pos < len(view):
        drafts = view[pos:pos + k]
        chunks.append(drafts)
        accepted = 0
        while accepted < k and done + accepted < len(committed) and drafts[accepted] == committed[done + accepted]:
            accepted += 1
        done += accepted
        pos += k
        if done < len(committed):  # the drawn token was committed (and uplinked as the next pending)
            assert view[pos] == committed[done]
            pos, done = pos + 1, done + 1
    return chunks


@pytest.mark.parametrize("name", ["slm_wo", "costeer", "specsteer", "sd"])
def test_guard_stops_a_verbatim_copy(models, name):
    """Make what the unguarded run sent the cloud the private context (its output; for
    specsteer/sd its whole cloud view, drafts included): guarded, no N consecutive output tokens
    come from it, nor N consecutive drafts of one iteration (rejected drafts reach the cloud
    too), and the run agrees with the unguarded one up to the first token the guard forbids."""
    n = 3
    speculative_method = privacy.CLOUD_VIEW[name] == privacy.UPLINKED
    hyper = {"spec_lambda": 1e9} if name == "specsteer" else {}
    free = run(name, models, **hyper)
    guard_ids = {k: r["cloud_view" if speculative_method else "token_ids"] for k, r in free.items()}
    guarded = run(name, models, guard=n, guard_ids=guard_ids, **hyper)
    for key, row in guarded.items():
        context = ngrams(guard_ids[key], n)
        assert len(guard_ids[key]) > n and not ngrams(row["token_ids"], n) & context
        if not speculative_method:
            original = free[key]["token_ids"]
            assert row["token_ids"][:n - 1] == original[:n - 1] and row["token_ids"][n - 1] != original[n - 1]
            continue
        free_first, first = draft_chunks(name, free[key])[0], draft_chunks(name, row)[0]
        assert first[:n - 1] == free_first[:n - 1] and first[n - 1] != free_first[n - 1]
        assert all(not ngrams(d, n) & context for d in draft_chunks(name, row))


@pytest.mark.parametrize("name", ["cs", "costeer", "ada_costeer", "specsteer", "sd"])
def test_guard_longer_than_any_copy_changes_nothing(models, name):
    free = run(name, models)
    guarded = run(name, models, guard=MAX_NEW + 4)
    assert {k: r["token_ids"] for k, r in free.items()} == {k: r["token_ids"] for k, r in guarded.items()}


@pytest.mark.parametrize("name", ["costeer", "specsteer"])
def test_guard_is_batch_invariant(models, name):
    guard_ids = {e.id: run(name, models)[e.id]["token_ids"] for e in EXAMPLES}
    batched = run(name, models, guard=3, guard_ids=guard_ids, batch_size=3)
    single = run(name, models, guard=3, guard_ids=guard_ids, batch_size=1)
    assert {k: r["token_ids"] for k, r in batched.items()} == {k: r["token_ids"] for k, r in single.items()}


def test_guard_with_sampling_never_draws_a_forbidden_token(models):
    s = Sampling(greedy=False, temperature=1.0, top_p=1.0, seed=1)
    free = run("costeer", models, sampling=s)
    guard_ids = {k: r["token_ids"] for k, r in free.items()}
    guarded = run("costeer", models, sampling=s, guard=2, guard_ids=guard_ids)
    for key, row in guarded.items():
        assert not ngrams(row["token_ids"], 2) & ngrams(guard_ids[key], 2)


def test_guard_windows_come_from_the_private_context_minus_the_query(models):
    gen = Generator(methods.get_method("costeer"), models, max_new_tokens=2, batch_size=1, copy_guard=3)
    guard = gen._guard([EXAMPLES[0]])
    tok = models[methods.LLM].tokenizer
    context, query = (tok.encode(t, add_special_tokens=False) for t in (EXAMPLES[0].personalized_query, QUERY))
    live = {tuple(np.asarray(guard.prefixes[0, j]).tolist()) + (int(guard.next_tokens[0, j]),)
            for j in range(guard.prefixes.shape[1]) if guard.live[0, j]}
    assert live == ngrams(context, 3) - ngrams(query, 3) and live


def test_guard_is_refused_where_the_cloud_decodes(models):
    for name in ("llm_wo", "llm_w"):
        with pytest.raises(ValueError, match="decodes in the cloud"):
            Generator(methods.get_method(name), models, max_new_tokens=2, batch_size=1, copy_guard=4)
    with pytest.raises(ValueError, match=r"copy_guard=1 is out of range"):
        Generator(methods.get_method("costeer"), models, max_new_tokens=2, batch_size=1, copy_guard=1)

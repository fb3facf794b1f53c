"""CoSteer_map and CoSteer_byte as the authors run them: NumPy on the host, one row at a time,
no KV cache (every step re-runs each model over its whole sequence). A plain transcription of
B.11.1 / B.11.2 with the literal T-step FTRL loop, kept as the ground truth of the jitted kernels
(`steering/cross_vocab.py`, tests/test_cross_vocab.py) and as the per-example baseline of
benchmarks/bench_cross_vocab.py. The models are a callable: (role, token ids) -> last logits.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from costeer_jax.models.vocab_alignment import TokenBytes, VocabAlignment

COMMIT = 256


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(x[np.isfinite(x)])
    return x - (m + np.log(np.sum(np.exp(x - m))))


def np_ftrl(llm, wo, w, alpha, beta, lam, eta, T):
    """Eq. 7 iterated T times, literally (Algorithm 1 lines 6-12), float64."""
    base = np_log_softmax(llm)
    delta = np_log_softmax(w) - np_log_softmax(wo)
    player, cum = base, np.zeros_like(base)
    for t in range(1, T + 1):
        cum = cum + alpha * (player - base) + beta * delta
        player = np_log_softmax((t * lam * base + cum + player / eta) / (t * lam + 1 / eta))
    return player


def np_candidates(table: TokenBytes, prefix: bytes):
    """(tokens whose bytes start with prefix [V] bool, each token's next outcome [V])."""
    L = len(prefix)
    ok = table.lengths >= L
    if L:
        ok &= np.all(table.table[:L].T == np.frombuffer(prefix, np.uint8)[None, :], axis=1)
    key = np.where(table.lengths > L, table.table[min(L, table.table.shape[0] - 1)].astype(np.int64), COMMIT)
    return ok, key


def np_byte_dist(logits, table: TokenBytes, prefix: bytes):
    """A model's 257-outcome distribution after `prefix`, from scratch (B.11.2 step 1)."""
    ok, key = np_candidates(table, prefix)
    out = np.full(257, -np.inf)
    x = np.asarray(logits, np.float64)
    for o in np.unique(key[ok]):
        sel = x[ok & (key == o)]
        out[o] = sel.max() + np.log(np.sum(np.exp(sel - sel.max())))
    return np_log_softmax(out)


def np_live(al: VocabAlignment, prefix: bytes):
    """Outcomes after which a token of both vocabularies is still reachable."""
    ok, key = np_candidates(al.llm_bytes, prefix)
    shared = np.zeros(al.llm_bytes.lengths.shape, bool)
    shared[al.llm_ids] = True
    live = np.zeros(257, bool)
    live[np.unique(key[ok & shared])] = True
    return live


def np_byte_walk(al: VocabAlignment, llm, wo, w, hyper: dict, recovery_beta: float | None = None) -> int:
    """One committed token of CoSteer_byte, greedy: its shared index (B.11.2 step 2). With
    recovery_beta, SpecSteer's Eq. 8 in byte space instead of FTRL (A.4)."""
    prefix = b""
    llm_shared = {int(t): i for i, t in enumerate(al.llm_ids)}
    while True:
        d = [np_byte_dist(llm, al.llm_bytes, prefix), np_byte_dist(wo, al.slm_bytes, prefix),
             np_byte_dist(w, al.slm_bytes, prefix)]
        feasible = np.flatnonzero(np_live(al, prefix) & np.all([np.isfinite(x) for x in d], axis=0))
        if recovery_beta is None:
            policy = np_ftrl(*(x[feasible] for x in d), **hyper)
        else:
            policy = d[0][feasible] + recovery_beta * (d[2][feasible] - d[1][feasible])
        outcome = int(feasible[np.argmax(policy)])
        if outcome == COMMIT:
            ok, key = np_candidates(al.llm_bytes, prefix)
            ends = [t for t in np.flatnonzero(ok & (key == COMMIT)) if int(t) in llm_shared]
            return llm_shared[int(max(ends, key=lambda t: (llm[t], -t)))]
        prefix += bytes([outcome])


def host_decode(kind: str, next_logits: Callable[[str, list[int]], np.ndarray], al: VocabAlignment,
                prompts: dict[str, Sequence[int]], max_new_tokens: int, hyper: dict) -> list[int]:
    """costeer_map ("map") or costeer_byte ("byte") for one row, greedy: the LLM's token ids.
    prompts: the chat prompt ids of the streams "llm", "slm_wo", "slm_w" (each model's own
    tokenizer); next_logits("llm" | "slm", ids) runs that model over the whole sequence."""
    streams = {name: list(ids) for name, ids in prompts.items()}
    ends = set(al.eos_shared.tolist())
    out = []
    for _ in range(max_new_tokens):
        x = {s: np.asarray(next_logits("llm" if s == "llm" else "slm", ids), np.float64) for s, ids in streams.items()}
        if kind == "map":
            i = int(np.argmax(np_ftrl(x["llm"][al.llm_ids], x["slm_wo"][al.slm_ids], x["slm_w"][al.slm_ids], **hyper)))
        else:
            i = np_byte_walk(al, x["llm"], x["slm_wo"], x["slm_w"], hyper)
        out.append(int(al.llm_ids[i]))
        streams["llm"].append(int(al.llm_ids[i]))
        streams["slm_wo"].append(int(al.slm_ids[i]))
        streams["slm_w"].append(int(al.slm_ids[i]))
        if i in ends:
            break
    return out


def host_specsteer_cross(next_logits, al: VocabAlignment, prompts: dict[str, Sequence[int]], llm_encode,
                         num_draft: int, lam: float, beta: float, max_new_tokens: int) -> list[int]:
    """Cross-tokenizer SpecSteer (SpecSteer A.4) for one row, greedy, no cache: SLM+ drafts K,
    the LLM and SLM- score the segment token by token over whole sequences, chunks pass while
    P_LLM >= lambda P_SLM-, the first failing boundary recovers by Eq. 8 in byte space. The
    segmentation (decoding/cross_speculative.segment_draft) is the method's definition and is
    shared; every probability and decision here is recomputed from full forwards in NumPy."""
    from costeer_jax.decoding.cross_speculative import segment_draft

    llm, wo, w = (list(prompts[k]) for k in ("llm", "slm_wo", "slm_w"))
    slm_eos = set(int(t) for t in al.slm_ids[al.eos_shared])
    llm_eos = int(al.llm_ids[al.eos_shared[0]])
    ends = set(al.eos_shared.tolist())
    logp = lambda role, seq, token: float(np_log_softmax(next_logits(role, seq))[token])
    out: list[int] = []
    while len(out) < max_new_tokens:
        drafts = []
        for _ in range(num_draft):
            drafts.append(int(np.argmax(next_logits("slm", w + drafts))))
        seg = segment_draft(drafts, al.slm_bytes, slm_eos, llm_encode, al.llm_bytes, llm_eos, 2 * num_draft + 8)
        at_s, at_l = 0, 0
        for s_end, l_end in seg.boundaries:
            p_llm = sum(logp("llm", llm + seg.llm_tokens[:j], seg.llm_tokens[j]) for j in range(at_l, l_end))
            p_wo = sum(logp("slm", wo + seg.slm_tokens[:j], seg.slm_tokens[j]) for j in range(at_s, s_end))
            if p_llm < np.log(lam) + p_wo:
                break
            at_s, at_l = s_end, l_end
        out += seg.llm_tokens[:at_l]
        llm += seg.llm_tokens[:at_l]
        wo += seg.slm_tokens[:at_s]
        w += seg.slm_tokens[:at_s]
        if at_l and seg.llm_tokens[at_l - 1] == llm_eos:
            break
        if at_s < num_draft:
            i = np_byte_walk(al, next_logits("llm", llm), next_logits("slm", wo), next_logits("slm", w), {},
                             recovery_beta=beta)
            out.append(int(al.llm_ids[i]))
            llm.append(int(al.llm_ids[i]))
            wo.append(int(al.slm_ids[i]))
            w.append(int(al.slm_ids[i]))
            if i in ends:
                break
    return out[:max_new_tokens]

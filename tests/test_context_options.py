"""The papers' context protocols for LongLaMP rows: bge vs BM25 retrieval with k records
(CoSteer Table 9, SpecSteer Table 7), irrelevant noise from another task (CoSteer Table 10) and
appended low-similarity noise (SpecSteer Table 7)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from costeer_jax.data import load_task
from costeer_jax.data.context_options import ContextOptions
from costeer_jax.data.costeer_release import record_text
from costeer_jax.data.retrieval import bm25_scores

RELEASE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "costeer_release"


def review(description: str, text: str, score: float) -> dict:
    return {"description": description, "reviewText": text, "overall": "5.0", "summary": "s", "bge_score": [score]}


def writing(summary: str, content: str) -> dict:
    return {"summary": summary, "content": content, "author": "a", "id": "w"}


@pytest.fixture()
def data_dir(tmp_path):
    """Three review users (profiles sorted by bge score as the release is) and two writing users."""
    reviews = [
        {"id": 0, "reviewerId": "u0", "input": "Write a review of a garden hose", "output": "ref0",
         "profile": [review("kitchen knife", "sharp steel blade", 0.9), review("garden shovel", "sturdy handle", 0.5),
                     review("garden hose reel", "hose reel works", 0.1)]},
        {"id": 1, "reviewerId": "u1", "input": "Write a review of a violin", "output": "ref1",
         "profile": [review("violin strings", "warm tone", 0.8), review("piano bench", "comfortable seat", 0.2)]},
        {"id": 2, "reviewerId": "u2", "input": "Write a review of hiking boots", "output": "ref2",
         "profile": [review("hiking boots", "garden hose too", 0.7), review("tent stakes", "bent quickly", 0.3),
                     review("camping stove", "boils water fast", 0.1)]},
    ]
    for row in reviews:
        row["top_5"] = row["profile"][:5]
    writings = [
        {"id": 0, "author": "w0", "input": "Write a post about rain", "output": "r",
         "profile": [writing("storm", "thunder all night"), writing("sun", "bright morning"),
                     writing("snow", "cold winter")]},
        {"id": 1, "author": "w1", "input": "Write a post about cats", "output": "r",
         "profile": [writing("cat", "purring softly"), writing("dog", "barking loudly")]},
    ]
    for row in writings:
        row["top_5"] = row["profile"][:5]
    for name, rows in (("longlamp_review", reviews), ("longlamp_writing", writings)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cogenesis.jsonl").write_text(json.dumps(
        {"id": "c0", "input": "q", "personalized_input": "ctx q", "output": "o"}) + "\n")
    return tmp_path


def records_shown(prompt: str, label: str = "Product") -> list[str]:
    return [line.split(": ", 1)[1] for line in prompt.splitlines() if line.startswith(f"{label}[")]


def test_bm25_scores_equal_a_hand_computed_lucene_bm25():
    documents = ["garden hose", "garden shovel handle", "violin"]
    k1, b = 1.5, 0.75
    lengths = [2, 3, 1]
    average = sum(lengths) / 3

    def idf(containing):
        return math.log(1 + (3 - containing + 0.5) / (containing + 0.5))

    def term(tf, length):  # Lucene's form: no (k1 + 1) factor in the numerator (a constant scale)
        return tf / (tf + k1 * (1 - b + b * length / average))

    # query "garden hose": 'garden' is in docs 0 and 1, 'hose' in doc 0 only
    expected = [idf(2) * term(1, 2) + idf(1) * term(1, 2), idf(2) * term(1, 3), 0.0]
    assert bm25_scores("garden hose", documents) == pytest.approx(expected, rel=1e-6)


def test_default_options_reproduce_the_release_prompt_and_bge_k_takes_the_profile_head(data_dir):
    default = load_task("longlamp_review", data_dir)
    # a seed without noise is not the default object, so this takes the general path
    explicit = load_task("longlamp_review", data_dir, context=ContextOptions(retrieval="bge", k=5, noise_seed=1))
    assert [e.personalized_query for e in default] == [e.personalized_query for e in explicit]
    two = load_task("longlamp_review", data_dir, context=ContextOptions(retrieval="bge", k=2))
    assert records_shown(two[0].personalized_query) == ["kitchen knife", "garden shovel"]
    short = load_task("longlamp_review", data_dir, context=ContextOptions(k=3))[1]  # a 2-record profile
    assert records_shown(short.personalized_query) == ["violin strings", "piano bench"]
    assert short.meta["num_history_records"] == 2


def test_bm25_retrieval_picks_the_hand_expected_records_over_the_whole_profile(data_dir):
    # Query "garden hose": record 3 (garden hose reel / hose reel) beats record 2 (garden only);
    # the bge head (kitchen knife) shares no term and drops out.
    rows = load_task("longlamp_review", data_dir, context=ContextOptions(retrieval="bm25", k=2))
    assert records_shown(rows[0].personalized_query) == ["garden hose reel", "garden shovel"]
    assert rows[0].meta["num_history_records"] == 2


def test_irrelevant_noise_is_seeded_drawn_from_another_task_and_never_the_rows_own_profile(data_dir):
    options = ContextOptions(noise="irrelevant", k=2, noise_seed=3)
    first = load_task("longlamp_review", data_dir, context=options)
    again = load_task("longlamp_review", data_dir, context=options)
    assert [e.personalized_query for e in first] == [e.personalized_query for e in again]
    writing_records = {w for line in (data_dir / "longlamp_writing.jsonl").read_text().splitlines()
                       for w in (p["summary"] for p in json.loads(line)["profile"])}
    for example in first:
        prompt = example.personalized_query
        assert prompt.startswith("The following are reddit post summaries with their content.")
        shown = records_shown(prompt, "Summary")
        assert len(shown) == 2 and set(shown) <= writing_records
        assert "Product[" not in prompt and example.query in prompt
    # another seed draws differently for some row; a row's draw does not depend on --limit
    other = load_task("longlamp_review", data_dir, context=ContextOptions(noise="irrelevant", k=2, noise_seed=4))
    assert [e.personalized_query for e in other] != [e.personalized_query for e in first]
    limited = load_task("longlamp_review", data_dir, limit=1, context=options)
    assert limited[0].personalized_query == first[0].personalized_query


def test_appended_noise_adds_the_lowest_bm25_records_of_other_users_after_the_retrieved_ones(data_dir):
    options = ContextOptions(k=2, noise="appended", noise_k=2, noise_seed=0)
    rows = load_task("longlamp_review", data_dir, context=options)
    raw = [json.loads(line) for line in (data_dir / "longlamp_review.jsonl").read_text().splitlines()]
    shown = records_shown(rows[0].personalized_query)
    assert shown[:2] == ["kitchen knife", "garden shovel"]  # the retrieved records come first
    own = {p["description"] for p in raw[0]["profile"]}
    appended = shown[2:]
    assert len(appended) == 2 and not set(appended) & own
    # every appended record scores no higher than any record of the pool left out
    pool = [p for row in raw[1:] for p in row["profile"]]
    scores = dict(zip((p["description"] for p in pool),
                      bm25_scores(raw[0]["input"], [record_text("longlamp_review", p) for p in pool])))
    assert scores["hiking boots"] > 0  # shares "garden hose": never low-similarity noise
    assert max(scores[d] for d in appended) <= min(s for d, s in scores.items() if d not in appended)
    assert rows == load_task("longlamp_review", data_dir, context=options)  # seeded


def test_options_outside_longlamp_and_bad_values_are_refused_with_the_fix(data_dir):
    with pytest.raises(ValueError, match="ships its context ready-made"):
        load_task("cogenesis", data_dir, context=ContextOptions(retrieval="bm25"))
    with pytest.raises(ValueError, match="--retrieval_k must be >= 1"):
        ContextOptions(k=0)
    with pytest.raises(ValueError, match="--noise must be one of"):
        ContextOptions(noise="loud")


def test_rows_record_the_context_and_evaluation_rebuilds_it():
    options = ContextOptions(retrieval="bm25", k=3, noise="appended", noise_k=1, noise_seed=7)
    config = {"alpha": 2.0, **options.as_config()}
    assert ContextOptions.from_config(config) == options
    assert ContextOptions.from_config({"alpha": 2.0}) == ContextOptions()


@pytest.mark.skipif(not (RELEASE_DIR / "longlamp_review.jsonl").is_file(), reason="shared release data absent")
def test_release_head_files_bge_head_is_top5_and_bm25_differs_on_some_row():
    default = load_task("longlamp_review", RELEASE_DIR)
    bge = load_task("longlamp_review", RELEASE_DIR, context=ContextOptions(retrieval="bge", k=5, noise_seed=1))
    bm25 = load_task("longlamp_review", RELEASE_DIR, context=ContextOptions(retrieval="bm25", k=5))
    assert [e.personalized_query for e in bge] == [e.personalized_query for e in default]
    assert any(a.personalized_query != b.personalized_query for a, b in zip(bm25, default))


def test_generate_records_the_protocol_and_refuses_it_where_it_does_not_apply(data_dir, tiny_chat_models, tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from costeer_jax.eval.evaluation import evaluate_prediction_files
    from costeer_jax.eval.scoring import Scorers

    out = tmp_path / "noisy.jsonl"
    common = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), f"--llm={tiny_chat_models['llm']}",
              f"--slm={tiny_chat_models['slm']}", f"--data_dir={data_dir}", "--max_new_tokens=2", "--batch_size=3",
              "--progress=false", "--compilation_cache_dir="]
    done = subprocess.run([*common, "--method=slm_w", "--task=longlamp_review", "--retrieval=bm25", "--retrieval_k=1",
                           "--noise=appended", "--noise_k=1", "--noise_seed=5", f"--output={out}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = ContextOptions(retrieval="bm25", k=1, noise="appended", noise_k=1, noise_seed=5)
    assert len(rows) == 3 and all(ContextOptions.from_config(r["config"]) == expected for r in rows)
    (result,) = evaluate_prediction_files([out], Scorers(), tasks=["longlamp_review"], metrics=["leakage"],
                                          data_dir=data_dir)
    assert result["averages"]["leak_span"] is not None and not result["missing_ids"]
    refused = subprocess.run([*common, "--method=slm_w", "--task=cogenesis", "--noise=irrelevant",
                              f"--output={tmp_path / 'x.jsonl'}"], capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "ships its context ready-made" in refused.stderr.strip().splitlines()[-1]

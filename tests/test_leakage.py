"""The leakage metric on hand-built cases: repeating the query is not a leak, copying a name is."""
from __future__ import annotations

import pytest

from costeer_jax.eval.leakage import leakage, longest_copied_span, ngram_leak_share, word_leakage, words

CONTEXT = ("Private notes: I am vegetarian, I live in Lyon, and I love small quiet places with live jazz. "
           "My sister Ana Lopez turns 30. Suggest a place for dinner tonight.")
QUERY = "Suggest a place for dinner tonight."


def test_repeating_the_query_is_no_leak():
    assert word_leakage("Suggest a place for dinner tonight!", CONTEXT, QUERY) == {
        "span": 0.0, "share_4": 0.0, "share_8": None}  # 6 words: no 8-gram at all


def test_copying_a_name_without_paraphrase_is_a_leak():
    out = word_leakage("Happy birthday, Ana Lopez!", CONTEXT, QUERY)
    assert out["span"] == 2.0  # "ana lopez"
    assert out["share_4"] == 0.0  # no 4 consecutive copied words


def test_a_paraphrase_copies_nothing():
    out = word_leakage("Since meat is off the table for you, try a calm bistro in the city with a jazz trio.",
                       CONTEXT, QUERY)
    assert out["span"] <= 1.0 and out["share_4"] == 0.0 and out["share_8"] == 0.0


def test_a_verbatim_copy_counts_every_copied_ngram():
    text = "I am vegetarian, I live in Lyon, and I love small quiet places. Try Le Bouchon."
    out = word_leakage(text, CONTEXT, QUERY)
    assert out["span"] == 13.0  # "i am vegetarian i live in lyon and i love small quiet places"
    n_words = len(words(text))  # 16
    assert out["share_4"] == pytest.approx((13 - 3) / (n_words - 3))
    assert out["share_8"] == pytest.approx((13 - 7) / (n_words - 7))


def test_a_span_that_runs_through_the_query_counts_only_its_private_part():
    # "suggest a place for dinner tonight" is in the query; "in lyon" is private.
    assert longest_copied_span(words("Suggest a place for dinner tonight in Lyon"), words(CONTEXT), words(QUERY)) == 2
    # A copy that extends a query phrase with private words is a leak as a whole.
    assert longest_copied_span(words("jazz my sister ana"), words(CONTEXT), words("my sister")) == 4


def test_token_ids_work_like_words():
    context, query = [5, 6, 7, 8, 9, 10, 11, 12], [7, 8]
    assert leakage([7, 8, 1, 2], context, query)["span"] == 0.0
    assert leakage([1, 9, 10, 11, 12, 2], context, query) == {"span": 4.0, "share_4": 1 / 3, "share_8": None}
    assert ngram_leak_share([5, 6, 7, 8], context, [5, 6, 7, 8], 4) == 0.0


def test_leakage_metric_in_an_evaluation_record_and_table(tmp_path):
    """--metrics=leakage through the scorer: the output's and the cloud view's leakage per row,
    averaged; reported in the table without ranking (lower is better, nothing bolded)."""
    import json

    from costeer_jax.data import Example
    from costeer_jax.eval.predictions import read_predictions
    from costeer_jax.eval.reports import build_table, table_markdown
    from costeer_jax.eval.scoring import Scorers, score_prediction_file

    examples = [Example("a", QUERY, CONTEXT, reference="Try Le Bouchon."),
                Example("b", "Name a hobby.", "My sister Ana Lopez climbs. Name a hobby.", reference="Climbing.")]
    records = []
    for method, outputs, views in (
            ("costeer", {"a": "I am vegetarian, I live in Lyon: try Le Bouchon.", "b": "Climbing, like Ana Lopez."},
             None),
            ("specsteer", {"a": "Try Le Bouchon.", "b": "Climbing."},
             {"a": "Try Le Bouchon small quiet places with live jazz", "b": "Climbing."})):
        path = tmp_path / f"{method}.jsonl"
        path.write_text("".join(json.dumps({"id": k, "method": method, "output": v, **(
            {"cloud_view": [1, 2], "cloud_view_text": views[k]} if views else {})}) + "\n" for k, v in outputs.items()))
        records.append(score_prediction_file("cogenesis", examples, read_predictions(path), ["rouge", "leakage"], Scorers()))
    costeer, specsteer = records
    assert costeer["per_example"][0]["leak_span"] == 7.0  # "i am vegetarian i live in lyon"
    assert costeer["per_example"][1]["leak_span"] == 2.0  # "ana lopez"
    assert costeer["averages"]["leak_span"] == 4.5 and costeer["averages"]["cloud_leak_span"] is None
    assert specsteer["averages"]["leak_span"] == 0.0  # the committed text copies nothing ...
    assert specsteer["per_example"][0]["cloud_leak_span"] == 6.0  # ... but a rejected draft did
    table = build_table(records, ["costeer", "specsteer"], significance_method="costeer")
    assert ("cogenesis", "leak_span") in table.columns and ("cogenesis", "leak_span") not in table.significance
    assert "cogenesis leak span" in table_markdown(table)
    from costeer_jax.eval.evaluation import write_reports

    paths = write_reports(records, tmp_path / "report.json")
    assert tmp_path / "report_leakage_cogenesis.png" in paths["plots"]


def test_the_speculative_cloud_holds_the_committed_text_and_the_uplink_stream(tmp_path):
    """SpecSteer's uplink interleaves rejected drafts with the committed text, cutting a copied
    span that the committed text holds whole; the cloud sees both, so its figures are the union."""
    import json

    from costeer_jax.data import Example
    from costeer_jax.eval.leakage import union_leakage
    from costeer_jax.eval.predictions import read_predictions
    from costeer_jax.eval.scoring import Scorers, score_prediction_file

    output = "You live in Lyon and love small quiet places with live jazz."
    stream = "You live in Lyon and zzz love small quiet qqq places with live jazz."
    path = tmp_path / "specsteer.jsonl"
    path.write_text(json.dumps({"id": "a", "method": "specsteer", "output": output, "cloud_view": [1],
                                "cloud_view_text": stream}) + "\n")
    record = score_prediction_file("cogenesis", [Example("a", QUERY, CONTEXT, reference="x")],
                                   read_predictions(path), ["leakage"], Scorers())
    row = record["per_example"][0]
    assert row["leak_span"] == 7.0  # "love small quiet places with live jazz"
    assert row["cloud_leak_span"] == 7.0  # the stream alone would say 4 ("places with live jazz")
    assert union_leakage([words(stream)], words(CONTEXT), words(QUERY))["span"] == 4.0
    both = union_leakage([words(output), words(stream)], words(CONTEXT), words(QUERY))
    grams = {tuple(t[i:i + 4]) for t in (words(output), words(stream)) for i in range(len(t) - 3)}
    copied = {g for g in grams if " ".join(g) in " ".join(words(CONTEXT))}
    assert both["share_4"] == pytest.approx(len(copied) / len(grams))

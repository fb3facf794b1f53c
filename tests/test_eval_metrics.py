"""ROUGE / METEOR against hand-computed values and independent library calls; the WordNet folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costeer_jax.eval import wordnet_setup
from costeer_jax.eval.text_metrics import load_wordnet, meteor, meteor_tokens, overlap_scores, rouge

RELEASE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "costeer_release"


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory):
    """A WordNet folder built the way `make venv` builds it, from the Debian packages."""
    if not (wordnet_setup.DEBIAN_WORDNET_DIR / "data.noun").is_file():
        pytest.skip(f"WordNet Debian packages not installed ({wordnet_setup.install_hint()})")
    return wordnet_setup.build_nltk_wordnet(tmp_path_factory.mktemp("nltk_data"))


def meteor_by_hand(matches: int, hypothesis_length: int, reference_length: int, chunks: int) -> float:
    """Banerjee & Lavie's METEOR with NLTK's defaults alpha=0.9, beta=3, gamma=0.5, x100."""
    precision, recall = matches / hypothesis_length, matches / reference_length
    f_mean = precision * recall / (0.9 * precision + 0.1 * recall)
    penalty = 0.5 * (chunks / matches) ** 3
    return 100 * f_mean * (1 - penalty)


# ---------------------------------------------------------------- ROUGE

def test_rouge_hand_checked():
    # Same bag of words, longest common subsequence "the gunman" (2 of 4).
    assert rouge("the gunman killed police", "police killed the gunman") == pytest.approx(
        {"rouge1": 100.0, "rougeL": 50.0})
    # 4 of 4 predicted words match 4 of 6 reference words: F = 2 * 1 * 2/3 / (1 + 2/3) = 0.8.
    assert rouge("the cat on mat", "the cat sat on the mat") == pytest.approx({"rouge1": 80.0, "rougeL": 80.0})
    # Stemming on: "running dogs" and "run dog" share both stems; case and punctuation are ignored.
    assert rouge("Running dogs!", "run dog") == pytest.approx({"rouge1": 100.0, "rougeL": 100.0})
    assert rouge("", "anything here") == {"rouge1": 0.0, "rougeL": 0.0}


def test_rouge_matches_rouge_score_on_released_references():
    from rouge_score import rouge_scorer

    path = RELEASE_DIR / "longlamp_writing.jsonl"
    if not path.is_file():
        pytest.skip("no released LongLaMP file")
    rows = [json.loads(line) for line in path.open()][:3]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for row in rows:
        prediction = row["top_5"][0]["content"]  # the user's closest past post as a stand-in prediction
        expected = scorer.score(row["output"], prediction)
        assert rouge(prediction, row["output"]) == pytest.approx(
            {"rouge1": 100 * expected["rouge1"].fmeasure, "rougeL": 100 * expected["rougeL"].fmeasure})


# ---------------------------------------------------------------- METEOR

def test_meteor_tokenisation_is_treebank_without_sentence_splitting():
    assert meteor_tokens("Don't stop, it's 3.5 km. Next one.") == [
        "Do", "n't", "stop", ",", "it", "'s", "3.5", "km.", "Next", "one", "."]


def test_meteor_hand_computed(nltk_data):
    wordnet = load_wordnet(nltk_data)
    sentence = "the cat sat on the mat"
    assert meteor(sentence, sentence, wordnet) == pytest.approx(meteor_by_hand(6, 6, 6, 1))  # 99.7685...
    # NLTK aligns a repeated word to its last unused occurrence: "the" -> position 4, so "the" and
    # "cat sat" form two chunks.
    assert meteor("the cat sat", sentence, wordnet) == pytest.approx(meteor_by_hand(3, 3, 6, 2))  # 44.83...
    # Three matches, each its own chunk: the reference positions run 5, 4, 2.
    assert meteor("mat the sat", sentence, wordnet) == pytest.approx(meteor_by_hand(3, 3, 6, 3))
    assert meteor("", sentence, wordnet) == 0.0 and meteor("words", "", wordnet) == 0.0


def test_meteor_uses_wordnet_synonyms(nltk_data):
    wordnet = load_wordnet(nltk_data)
    # "auto" and "car" share the synset car.n.01: all four words align in one chunk.
    assert meteor("the auto is fast", "the car is fast", wordnet) == pytest.approx(meteor_by_hand(4, 4, 4, 1))
    # "bus" is no synonym: three matches in two chunks.
    assert meteor("the bus is fast", "the car is fast", wordnet) == pytest.approx(meteor_by_hand(3, 4, 4, 2))


def test_meteor_equals_nltk_with_the_same_tokenisation(nltk_data):
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import meteor_score

    wordnet = load_wordnet(nltk_data)
    pairs = [("The quick brown fox jumped over the lazy dog.", "A fast brown fox leaps over a lazy dog!"),
             ("I loved this pen; the ink flows well.", "Great pen. Love how smoothly the ink flows, 5 stars.")]
    for prediction, reference in pairs:
        expected = 100 * meteor_score([word_tokenize(reference, preserve_line=True)],
                                      word_tokenize(prediction, preserve_line=True), wordnet=wordnet)
        assert meteor(prediction, reference, wordnet) == pytest.approx(expected)
        assert 0 < expected < 100


def test_overlap_scores_rows(nltk_data):
    rows = overlap_scores(["the gunman killed police", ""], ["police killed the gunman", "x y"], ["rouge", "meteor"],
                          nltk_data)
    assert rows[0]["rouge1"] == pytest.approx(100.0) and rows[0]["rougeL"] == pytest.approx(50.0)
    assert rows[0]["meteor"] == pytest.approx(meteor_by_hand(4, 4, 4, 3))  # chunks: "the gunman", "killed", "police"
    assert rows[1] == {"rouge1": 0.0, "rougeL": 0.0, "meteor": 0.0}
    assert overlap_scores(["a b"], ["a b"], ["rouge"]) == [{"rouge1": 100.0, "rougeL": 100.0}]
    with pytest.raises(ValueError, match="unknown overlap metric"):
        overlap_scores(["a"], ["a"], ["bleu"])


# ---------------------------------------------------------------- the WordNet folder

def test_wordnet_folder_is_complete_idempotent_and_has_correct_lexnames(nltk_data):
    folder = wordnet_setup.wordnet_dir(nltk_data)
    lexnames = (folder / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    wordnet_setup.build_nltk_wordnet(nltk_data)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # nothing rewritten
    wordnet = load_wordnet(nltk_data)
    # Lexicographer file names come from our lexnames: a wrong table would mislabel these.
    assert wordnet.synset("car.n.01").lexname() == "noun.artifact"
    assert wordnet.synset("run.v.01").lexname() == "verb.motion"
    assert wordnet.synset("fast.r.01").lexname() == "adv.all"
    assert wordnet.get_version() == "3.0"


def test_lexnames_are_checked_against_the_database(nltk_data, monkeypatch):
    monkeypatch.setattr(wordnet_setup, "_LEXICOGRAPHER_FILES", wordnet_setup._LEXICOGRAPHER_FILES[:-1])
    with pytest.raises(wordnet_setup.WordNetMissingError, match="is this WordNet 3.0"):
        wordnet_setup.check_lexnames_against_data(wordnet_setup.DEBIAN_WORDNET_DIR)


def test_missing_wordnet_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(wordnet_setup.WordNetMissingError, match="make venv"):
        load_wordnet(tmp_path / "nowhere")
    with pytest.raises(wordnet_setup.WordNetMissingError, match="apt-get install"):
        wordnet_setup.build_nltk_wordnet(tmp_path / "out", source=tmp_path / "empty")
    assert wordnet_setup.main(["--target", str(tmp_path / "out"), "--source", str(tmp_path / "empty")]) == 1
    assert "wordnet-base" in capsys.readouterr().err

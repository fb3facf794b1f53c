"""Task adapters: released CoSteer files, LaMP/LongLaMP layouts, BM25 retrieval and input validation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from costeer_jax.data import (COSTEER_TASKS, PREFERENCE_TASKS, PREFERENCES, TASKS, DataFormatError, Example,
                              default_data_dir, load_prompts_file, load_task)
from costeer_jax.data.retrieval import bm25_top_k

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASE_DIR = REPO_ROOT.parent / "shared" / "data" / "costeer_release"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LONGLAMP_RELEASE_TEXT_FIELDS = {"longlamp_abstract": ("title", "abstract"),
                                "longlamp_review": ("description", "reviewText"),
                                "longlamp_writing": ("summary", "content")}


def release_dir_for(task: str) -> Path:
    """The shared release folder, or the project's fixture for the file the release lacks here."""
    if (RELEASE_DIR / f"{task}.jsonl").is_file():
        return RELEASE_DIR
    if (FIXTURES / "costeer_release_like" / f"{task}.jsonl").is_file():
        return FIXTURES / "costeer_release_like"
    pytest.skip(f"{task}.jsonl is not available under {RELEASE_DIR}")


def raw_rows(directory: Path, task: str) -> list[dict]:
    with (directory / f"{task}.jsonl").open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------- released CoSteer files

def test_task_registry_names_all_fourteen_tasks():
    assert set(COSTEER_TASKS) == {"cogenesis", "longlamp_abstract", "longlamp_review", "longlamp_writing",
                                  "helpsteer", "personal_preference_eval", "truthfulqa", "ultrachat"}
    assert set(TASKS) - set(COSTEER_TASKS) == {"lamp_4", "lamp_5", "lamp_7", "longlamp_2", "longlamp_3", "longlamp_4"}
    assert PREFERENCES == ("concise", "creative", "uplifting", "verbose")


def test_default_data_dir_finds_the_shared_release():
    if not RELEASE_DIR.is_dir():
        pytest.skip("no ../shared/data/costeer_release")
    assert default_data_dir() == RELEASE_DIR.resolve()


def test_cogenesis_private_profile_is_only_in_the_personalized_prompt():
    directory = release_dir_for("cogenesis")
    rows = raw_rows(directory, "cogenesis")
    examples = load_task("cogenesis", directory)
    assert len(examples) == len(rows)
    for row, example in zip(rows, examples):
        assert example.id == str(row["id"]) and example.reference == row["output"]
        assert example.query == row["input"] and example.personalized_query == row["personalized_input"]
        profile, history = example.meta["profile"], example.meta["writing_history"]
        assert profile and history, example.id
        assert profile in example.personalized_query and profile not in example.query
        assert history in example.personalized_query and history not in example.query
        assert example.query in example.personalized_query
        assert "## Task" not in history and "## User" not in profile
    # A concrete private fact from the first released row.
    first = examples[0]
    assert "Homes for Humanity" in first.query and "Martin Reynolds" in first.meta["profile"]
    assert "Martin Reynolds" not in first.query


@pytest.mark.parametrize("task", ["longlamp_abstract", "longlamp_review", "longlamp_writing"])
def test_longlamp_release_lists_five_history_records_before_the_query(task):
    directory = release_dir_for(task)
    rows = raw_rows(directory, task)
    examples = load_task(task, directory)
    assert [e.id for e in examples] == [str(r["id"]) for r in rows]
    first_key, second_key = LONGLAMP_RELEASE_TEXT_FIELDS[task]
    for row, example in zip(rows, examples):
        assert example.query == row["input"] and example.reference == row["output"]
        prompt = example.personalized_query
        assert prompt.endswith("Now it's your turn\n\n" + row["input"])
        positions = []
        for number, record in enumerate(row["top_5"][:5], start=1):
            block = f"[{number}]: {record[first_key]}\n"
            assert block in prompt
            assert f"[{number}]: {record[second_key]}\n" in prompt
            assert str(record[second_key]) not in example.query
            positions.append(prompt.index(block))
        assert positions == sorted(positions) and len(positions) == 5
        assert "[6]:" not in prompt
        assert prompt.index("Now it's your turn") > positions[-1]


@pytest.mark.parametrize("task", PREFERENCE_TASKS)
@pytest.mark.parametrize("preference", PREFERENCES)
def test_preference_tasks_append_the_preference_sentence(task, preference):
    directory = release_dir_for(task)
    rows = raw_rows(directory, task)
    examples = load_task(task, directory, preference=preference)
    assert len(examples) == len(rows) == 200
    for row, example in zip(rows, examples):
        assert example.id == str(row["id"]) and example.query == row["input"] and example.reference is None
        assert example.personalized_query == f"{row['input']}\nYour answer should be as {preference} as possible"
        assert "Your answer should be as" not in example.query
        assert example.meta == {"preference": preference}


def test_limit_keeps_the_first_rows():
    directory = release_dir_for("helpsteer")
    examples = load_task("helpsteer", directory, preference="verbose", limit=3)
    assert [e.id for e in examples] == [str(r["id"]) for r in raw_rows(directory, "helpsteer")[:3]]
    assert load_task("helpsteer", directory, preference="verbose", limit=0) == []


# ---------------------------------------------------------------- errors that name the fix

def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: cogenesis, longlamp_abstract"):
        load_task("lamp_9")


def test_preference_task_without_preference_says_so(tmp_path):
    (tmp_path / "truthfulqa.jsonl").write_text('{"id": 1, "input": "q"}\n')
    with pytest.raises(ValueError, match="--preference, one of concise, creative, uplifting, verbose"):
        load_task("truthfulqa", tmp_path)
    with pytest.raises(ValueError, match="--preference, one of"):
        load_task("truthfulqa", tmp_path, preference="funny")
    with pytest.raises(ValueError, match="applies only to"):
        load_task("cogenesis", tmp_path, preference="concise")


def test_missing_file_names_the_path_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_task("longlamp_abstract", tmp_path)
    assert str(tmp_path / "longlamp_abstract.jsonl") in str(error.value) and "--data_dir" in str(error.value)


def test_invalid_row_names_file_line_and_field(tmp_path):
    lines = [{"id": "a", "input": "q", "personalized_input": "ctx q", "output": "r"},
             {"id": "b", "input": "q", "personalized_input": "ctx q", "output": "r"},
             {"id": "c", "input": "q", "output": "r"}]
    path = tmp_path / "cogenesis.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}:4: missing field\(s\) 'personalized_input'"):
        load_task("cogenesis", tmp_path)
    (tmp_path / "longlamp_review.jsonl").write_text(
        json.dumps({"id": 0, "input": "q", "output": "r", "top_5": [{"description": "d"}]}) + "\n")
    with pytest.raises(DataFormatError,
                       match=r"longlamp_review.jsonl:1 \(top_5 record 1\): missing field\(s\) 'reviewText'"):
        load_task("longlamp_review", tmp_path)
    (tmp_path / "ultrachat.jsonl").write_text('{"id": 1, "input": "q"}\n{"id": 1, "input": "again"}\n')
    with pytest.raises(DataFormatError, match="duplicate id '1'"):
        load_task("ultrachat", tmp_path, preference="concise")


def test_generic_prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": 7, "input": "q1", "personalized_input": "ctx\nq1", "output": "gold"}) + "\n"
                    + json.dumps({"id": "x", "input": "q2", "personalized_input": "ctx\nq2"}) + "\n")
    assert load_prompts_file(path) == [Example("7", "q1", "ctx\nq1", "gold"), Example("x", "q2", "ctx\nq2", None)]
    path.write_text(json.dumps({"id": 1, "input": "q"}) + "\n")
    with pytest.raises(DataFormatError, match=r"prompts.jsonl:1: missing field\(s\) 'personalized_input'"):
        load_prompts_file(path)


# ---------------------------------------------------------------- BM25 retrieval

def test_bm25_ranks_by_term_overlap_and_keeps_profile_order_on_ties():
    documents = ["the cat sat on the mat", "dogs bark loudly at night", "a cat and a dog play outside"]
    assert bm25_top_k("cat play", documents, 2) == [2, 0]  # doc 2 has both terms, doc 0 one
    assert bm25_top_k("zebra", documents, 2) == [0, 1]  # no overlap: profile order
    assert bm25_top_k("dogs", documents, 10) == [1, 0, 2]  # k beyond the profile: all, best first
    assert bm25_top_k("cat", [], 4) == [] and bm25_top_k("cat", documents, 0) == []


# ---------------------------------------------------------------- LaMP / LongLaMP (SpecSteer Table 13)

def test_lamp4_official_layout_top4_bm25_and_table13_prompt():
    examples = load_task("lamp_4", FIXTURES / "lamp")  # LaMP_4/dev/dev_questions.json
    assert [e.id for e in examples] == ["4001", "4002"]
    first, second = examples
    assert first.reference == "Solar panels coming to every public school"
    retrieved = first.meta["retrieved_profile_ids"]
    assert len(retrieved) == 4 and retrieved[0] == "40013"  # the rooftop-solar story matches most terms
    assert "40010" not in retrieved and "40014" not in retrieved  # bakery, marathon: no shared term
    assert first.personalized_query.startswith(
        '"Rooftop solar panels save energy" is the title for "Homeowners with rooftop solar panels report lower '
        'energy bills.", and ')
    assert first.personalized_query.endswith(". " + first.query)
    assert "Homeowners" not in first.query
    assert second.personalized_query == (
        '"Firefighters rescue cat from tree" is the title for "Firefighters used a ladder to rescue a cat stuck in a '
        'tree.", and "Storm floods basements" is the title for "Heavy storm rain flooded basements across the '
        'county.". Generate a headline for the following article: A stray cat was rescued from a storm drain by '
        'firefighters.')


def test_lamp5_and_lamp7_prompts_and_missing_outputs():
    (lamp5,) = load_task("lamp_5", FIXTURES / "lamp")
    assert lamp5.reference == "Molecular property prediction with graph networks"
    assert lamp5.meta["retrieved_profile_ids"][0] == "50010"
    assert lamp5.personalized_query.startswith('"Graph neural networks for chemistry" is the title for ')
    assert lamp5.personalized_query.endswith(". Following the given patterns " + lamp5.query)
    (lamp7,) = load_task("lamp_7", FIXTURES / "lamp", split="test")
    assert lamp7.reference is None  # the test split ships no outputs file
    assert lamp7.personalized_query == (
        '"hiking in the mountains this weekend, so excited", and "coffee first, then emails" are written by a person. '
        "Following the given patterns " + lamp7.query)


def test_longlamp2_official_layout():
    (example,) = load_task("longlamp_2", FIXTURES / "longlamp")
    assert example.reference == "Long documents need sparse attention."
    assert example.meta["retrieved_profile_ids"][:2] == ["20010", "20013"]
    assert len(example.meta["retrieved_profile_ids"]) == 4
    entries = example.personalized_query.split("\n\n")
    assert entries[0] == ('Here are some examples of abstracts written by this author: Title: "Efficient transformers '
                          'for long documents" Abstract: "We propose sparse attention patterns that scale to long '
                          'documents."')
    assert len(entries) == 4 and entries[-1].endswith('". Following these examples, ' + example.query)
    assert "Protein folding" not in example.query


def test_longlamp3_hub_row_layout_with_inline_outputs():
    (example,) = load_task("longlamp_3", FIXTURES / "longlamp", split="dev")  # served by val_questions.json
    assert example.id == "0" and example.reference == "This bottle keeps my water cold all day."
    assert example.personalized_query.startswith(
        'Here are past reviews written by this user: Product: "A plastic water bottle" Summary: "Bottle leaks" '
        'Review: "The water bottle leaks a little."\n\n')
    assert example.personalized_query.endswith(". Following their style, " + example.query)


def test_longlamp4_from_the_hub_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    rows = json.loads((FIXTURES / "longlamp" / "hub_rows" / "topic_writing_user_val.json").read_text())
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = load_task("longlamp_4")
    assert calls == [("LongLaMP/LongLaMP", "topic_writing_user", "val")]
    assert [e.id for e in examples] == ["0", "1"]
    assert examples[0].meta["retrieved_profile_ids"][0] == "p2"  # the motorcycle post
    assert examples[0].personalized_query.startswith(
        'Here are past posts written by this author: Summary: "Motorcycle engine rebuild, part one" Content: '
        '"Took the old engine apart."')
    assert examples[1].personalized_query == examples[1].query  # empty profile: nothing to add

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        load_task("longlamp_4", setting="temporal")


def test_lamp_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs --data_dir"):
        load_task("lamp_4")
    with pytest.raises(FileNotFoundError, match="dev_questions.json"):
        load_task("lamp_4", tmp_path)
    bad = [{"id": "1", "input": "Generate a headline for the following article: x",
            "profile": [{"id": "p", "title": "t"}]}]
    (tmp_path / "dev_questions.json").write_text(json.dumps(bad))
    with pytest.raises(DataFormatError, match=r"dev_questions.json row 0 profile entry 0: missing field\(s\) 'text'"):
        load_task("lamp_4", tmp_path)


def test_top_users_keeps_the_longest_profiles_in_file_order_before_limit(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "lamp", tmp_path / "lamp")
    questions = tmp_path / "lamp" / "LaMP_4" / "dev" / "dev_questions.json"
    rows = json.loads(questions.read_text())
    template = rows[0]
    sizes = {"u1": 1, "u2": 4, "u3": 2, "u4": 4}  # u2 and u4 are the most active; u3 ties nobody
    rows = [dict(template, id=user, profile=template["profile"][:1] * size) for user, size in sizes.items()]
    questions.write_text(json.dumps(rows))
    assert [e.id for e in load_task("lamp_4", tmp_path / "lamp", top_users=2)] == ["u2", "u4"]
    assert [e.id for e in load_task("lamp_4", tmp_path / "lamp", top_users=3)] == ["u2", "u3", "u4"]
    assert [e.id for e in load_task("lamp_4", tmp_path / "lamp", top_users=2, limit=1)] == ["u2"]
    with pytest.raises(ValueError, match="--top_users selects LaMP/LongLaMP users"):
        load_task("cogenesis", top_users=2)

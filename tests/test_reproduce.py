"""experiments/reproduce.py: every registered table plans (dry run, as CI runs it); the paper
numbers have the table's shape; a table runs end to end on tiny models, and a rerun after an
interruption redoes only what is missing."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT
from costeer_jax.decoding.methods import METHOD_NAMES
from costeer_jax.reproduction.tables import TABLES

SCRIPT = str(REPO_ROOT / "experiments" / "reproduce.py")


def reproduce(*args, timeout=900):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)


def test_registry_rows_have_the_tables_shape_and_runnable_methods():
    for name, spec in TABLES.items():
        labels = [run.label for run in spec.runs]
        assert len(labels) == len(set(labels)), name
        for label, values in spec.paper.items():
            assert label in labels, (name, label)
            assert len(values) == len(spec.tasks) * len(spec.columns), (name, label)
        for run in spec.runs:
            assert run.method in METHOD_NAMES or spec.needs, (name, run.method)
    for required in ("costeer_table1", "costeer_table2", "costeer_table9", "costeer_table10", "costeer_table11",
                     "costeer_table12", "costeer_table13", "costeer_table14", "costeer_figure2", "specsteer_table2",
                     "specsteer_table4", "specsteer_table7", "specsteer_table9", "specsteer_table10",
                     "specsteer_table11"):
        assert required in TABLES


def test_dry_run_of_every_table_and_the_analytic_tables(tmp_path):
    done = reproduce("--table=all", "--dry_run", f"--output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in TABLES:
        assert name in done.stdout, name
    assert "| llm_w | 0.96 / 0.95 | 1.74 / 1.74 | 9.98 / 9.98 |" in done.stdout  # Table 14 beside ours
    assert "| LLM (RAG) | 4.01 / 4.05" in done.stdout  # Table 11's reproducible row
    assert "note: a pair of two tokenizers" in done.stdout  # Table 11 names what it needs
    assert not list(tmp_path.rglob("*.jsonl"))  # a dry run runs nothing
    unknown = reproduce("--table=costeer_table99")
    assert unknown.returncode != 0 and "unknown table 'costeer_table99'" in unknown.stderr


def review_data(tmp_path):
    """A one-row longlamp_review file of the CoSteer release's layout."""
    data = tmp_path / "data"
    data.mkdir()
    profile = [{"description": f"item {i}", "reviewText": f"good item {i}", "overall": "5.0", "summary": "s",
                "bge_score": [1.0 - i / 10]} for i in range(6)]
    (data / "longlamp_review.jsonl").write_text(json.dumps(
        {"id": 0, "reviewerId": "u", "input": "Write a review of item 2", "output": "good item",
         "profile": profile, "top_5": profile[:5]}) + "\n")
    return data


def test_rows_that_each_set_one_hyperparameter_run_as_one_sweep(tiny_chat_models, tmp_path):
    """Figure 2's alpha rows batch as one sweep.py run (configurations as rows), a lone T row is
    a plain generate; the table and the figure read the sweep's per-configuration files."""
    data, out = review_data(tmp_path), tmp_path / "out"
    args = ["--table=costeer_figure2", f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}",
            "--limit=1", "--max_new_tokens=2", "--tasks=longlamp_review", f"--data_dir={data}", f"--output_dir={out}",
            "--extra=--progress=false", "--rows=alpha=0,alpha=4,T=1"]
    plan = reproduce(*args, "--dry_run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    sweeps = [line for line in plan.stdout.splitlines() if "sweep.py" in line]
    assert len(sweeps) == 2 and "--grid=alpha=0,4" in sweeps[0] and "--batch_size=2" in sweeps[0]
    assert sum("generate.py" in line for line in plan.stdout.splitlines()) == 1  # T=1 alone
    done = reproduce(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/2]" in done.stderr and "alpha=0, alpha=4" in done.stderr
    folder = out / "costeer_figure2" / "longlamp_review"
    swept = sorted(p.name for p in (folder / "sweep_costeer_alpha").glob("*.jsonl"))
    assert len(swept) == 2 and (folder / "T=1.jsonl").exists()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in (out / "costeer_figure2.md").read_text().splitlines()}
    assert all(" - " not in rows[label] for label in ("alpha=0", "alpha=4", "T=1"))  # every row scored
    assert list(out.glob("costeer_figure2_sweep_longlamp_review_*.png"))  # the figure: ROUGE-L against alpha


def test_a_table_end_to_end_on_tiny_models_and_resume_redoes_only_the_missing_run(tiny_chat_models, tmp_path):
    data = review_data(tmp_path)
    out = tmp_path / "out"
    args = ["--table=costeer_table12", f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}",
            "--limit=1", "--max_new_tokens=2", "--tasks=longlamp_review", f"--data_dir={data}", f"--output_dir={out}",
            "--extra=--progress=false", "--rows=LightCoSteer,CoSteer"]
    first = reproduce(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (out / "costeer_table12.md").read_text()
    assert "| CoSteer | " in table and "(32.72)" in table  # ours beside the paper's Review R-1
    runs = sorted((out / "costeer_table12" / "longlamp_review").glob("*.jsonl"))
    assert len(runs) == 2  # --rows
    kept = {p.name: p.stat().st_mtime_ns for p in runs}
    lost = out / "costeer_table12" / "longlamp_review" / "CoSteer.jsonl"
    lost.write_text("")  # as if killed before its batch landed
    second = reproduce(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert lost.read_text().strip()  # redone
    for path in runs:
        if path != lost:
            assert path.stat().st_mtime_ns == kept[path.name]  # untouched


def test_killed_mid_table_loses_no_written_row(tiny_chat_models, tmp_path):
    """SIGKILL of reproduce.py and its generate.py child while the table's first run is writing:
    every row on disk at the kill is still there, byte for byte, after the rerun; the rerun decodes
    only the missing rows and writes the table."""
    import os
    import signal
    import time

    data, out, rows = tmp_path / "data", tmp_path / "out", 5
    data.mkdir()
    profile = [{"description": f"item {i}", "reviewText": f"good item {i}", "overall": "5.0", "summary": "s",
                "bge_score": [1.0 - i / 10]} for i in range(6)]
    (data / "longlamp_review.jsonl").write_text("".join(json.dumps(
        {"id": i, "reviewerId": f"u{i}", "input": f"Write a review of item {i}", "output": "good item",
         "profile": profile, "top_5": profile[:5]}) + "\n" for i in range(rows)))
    args = [sys.executable, SCRIPT, "--table=costeer_table12", f"--llm={tiny_chat_models['llm']}",
            f"--slm={tiny_chat_models['slm']}", f"--limit={rows}", "--batch_size=1", "--max_new_tokens=2",
            "--tasks=longlamp_review", f"--data_dir={data}", f"--output_dir={out}", "--extra=--progress=false",
            "--rows=LightCoSteer,CoSteer"]
    folder = out / "costeer_table12" / "longlamp_review"
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: the kill takes generate.py too
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        written = [p for p in folder.glob("*.jsonl") if p.read_text().count("\n") >= 2]
        if written:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    at_kill = {p.name: p.read_bytes() for p in folder.glob("*.jsonl")}
    assert proc.returncode == -signal.SIGKILL and not (out / "costeer_table12.md").exists(), \
        "the table was not interrupted midway"
    assert sum(b.count(b"\n") for b in at_kill.values()) < 2 * rows

    rerun = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name, before in at_kill.items():
        whole_rows = before[:before.rfind(b"\n") + 1]
        assert (folder / name).read_bytes().startswith(whole_rows), name  # nothing written is lost or redone
    for path in folder.glob("*.jsonl"):
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
        assert sorted(ids) == sorted(str(i) for i in range(rows)), path.name  # each row once
    first = next(name for name, before in at_kill.items() if before.count(b"\n") >= 2)
    figures = json.loads((folder / first.replace(".jsonl", ".figures.json")).read_text())
    assert figures["examples"] == rows - at_kill[first].count(b"\n")  # only the missing rows decoded
    assert "| CoSteer | " in (out / "costeer_table12.md").read_text()

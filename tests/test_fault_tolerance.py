"""Kill-and-resume: generate.py killed (SIGKILL) mid-run and restarted ends with exactly the rows
of an uninterrupted run: no duplicates, no losses."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT


def test_killed_run_resumes_to_the_same_output(tiny_chat_models, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(
        json.dumps({"id": f"q{i}", "input": f"Question number {i}: name a colour.",
                    "personalized_input": f"I am a painter who loves blue. Question number {i}: name a colour."}) + "\n"
        for i in range(12)))

    def command(out):
        return [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--method=costeer", "--T=2",
                f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}",
                f"--prompts_file={prompts}", f"--output={out}", "--batch_size=1", "--max_new_tokens=24",
                "--progress=false"]

    full = tmp_path / "full.jsonl"
    subprocess.run(command(full), check=True, capture_output=True, timeout=600)

    resumed = tmp_path / "resumed.jsonl"
    proc = subprocess.Popen(command(resumed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if resumed.exists() and resumed.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    written_at_kill = resumed.read_text().count("\n")
    assert proc.returncode == -signal.SIGKILL and written_at_kill < 12, "the run was not interrupted mid-way"

    finish = subprocess.run(command(resumed), check=True, capture_output=True, text=True, timeout=600)
    figures = json.loads(finish.stdout.strip().splitlines()[-1])
    assert figures["examples"] == 12 - written_at_kill
    assert sorted(resumed.read_text().splitlines()) == sorted(full.read_text().splitlines())

"""LLM judge against a real HTTP server on 127.0.0.1 that the test starts and that stops by itself."""
from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from costeer_jax.data import Example, load_task
from costeer_jax.eval.evaluation import evaluate_prediction_files
from costeer_jax.eval.judge import (JudgeConfig, JudgeConfigurationError, judge_answers, judge_prompt,
                                    parse_rating, request_with_retries)
from costeer_jax.eval.scoring import Scorers

MAX_REQUESTS = 200  # the server refuses to serve more and shuts down
LIFETIME_S = 60.0


class JudgeServer:
    """A scripted OpenAI-compatible endpoint: fails the first `fail_first` requests with 503 (or
    every request with `status`), then rates overall answers [[8]] and personalization [[6]],
    and answers without a rating when the answer says UNPARSEABLE."""

    def __init__(self, fail_first: int = 0, status: int | None = None):
        self.fail_first, self.status = fail_first, status
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "authorization": self.headers.get("Authorization")})
                    count = len(server.requests)
                if server.status is not None or count <= server.fail_first:
                    self._reply(server.status or 503, {"error": {"message": "busy"}})
                    return
                prompt = body["messages"][0]["content"]
                if "UNPARSEABLE" in prompt:
                    content = "I cannot rate this."
                elif "impartial evaluator" in prompt:
                    content = "Solid answer. Rating: [[8]]"
                else:
                    content = "Somewhat personal. Rating: [[6]]"
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 0.2
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        deadline = time.monotonic() + LIFETIME_S
        while not self.stopped.is_set() and time.monotonic() < deadline and len(self.requests) < MAX_REQUESTS:
            self.httpd.handle_request()
        self.httpd.server_close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=5)


def cogenesis_example(example_id: str) -> Example:
    personalized = ("You are now a helpful personal AI assistant.\n\n## User Profile\nName: Ada\n\n"
                    "## User Writing History\nTask: t\nContent: c\n\n## Task\nWrite a note.\n")
    return Example(example_id, "Write a note.", personalized, "ref",
                   {"profile": "Name: Ada", "writing_history": "Task: t\nContent: c"})


def config_for(server: JudgeServer, **overrides) -> JudgeConfig:
    options = dict(url=server.url, model="judge-test", api_key_env="COSTEER_TEST_JUDGE_KEY", runs=5, max_retries=3,
                   backoff_s=0.01, timeout_s=10, workers=2)
    options.update(overrides)
    return JudgeConfig(**options)


def test_parse_rating():
    assert parse_rating("Good. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[ 8.5 ]]") == 8.5
    assert parse_rating("format [[rating]], e.g. [[5]] ... my verdict: [[9]]") == 9.0  # the last one counts
    assert parse_rating("Rating: 7") is None
    assert parse_rating("[[11]]") is None and parse_rating("[[0]]") is None
    assert parse_rating("") is None


def test_prompts_follow_figures_6_and_7():
    example = cogenesis_example("a")
    overall = judge_prompt("judge_overall", example, "  My note.  ")
    personal = judge_prompt("judge_personalized", example, "My note.")
    assert overall.startswith("[Instruction]\nPlease act as an impartial evaluator and assess the quality")
    assert personal.startswith("[Instruction]\nPlease act as an impartial judge and evaluate the AI assistant's "
                               "response based on its alignment")
    for prompt in (overall, personal):
        assert ("you must rate the response on a scale of 1 to 10 by strictly following this format: [[rating]], "
                "for example: Rating: [[5]].") in prompt
        assert prompt.endswith("[User Profile and Writing History]\nName: Ada\nTask: t\nContent: c\n\n[Question]\n"
                               "Write a note.\n\n[The Start of Assistant's Answer]\nMy note.\n"
                               "[The End of Assistant's Answer]")


def test_judge_averages_runs_retries_and_counts_parse_failures(monkeypatch):
    monkeypatch.setenv("COSTEER_TEST_JUDGE_KEY", "sk-test")
    examples = [cogenesis_example("a"), cogenesis_example("b"), cogenesis_example("c")]
    answers = ["A fine note.", "Another note.", "UNPARSEABLE"]
    with JudgeServer(fail_first=2) as server:
        rows, counts = judge_answers(examples, answers, config_for(server))
    assert len(server.requests) == 3 * 2 * 5 + 2  # every run of both aspects, plus the two retried 503s
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert all(r["body"]["temperature"] == 0 and r["body"]["model"] == "judge-test" for r in server.requests)
    assert all(r["authorization"] == "Bearer sk-test" for r in server.requests)
    assert counts == {"requests": 30, "parse_failures": 10, "request_failures": 0}
    assert [(r["judge_overall"], r["judge_personalized"]) for r in rows] == [(8.0, 6.0), (8.0, 6.0), (None, None)]
    assert rows[0]["judge_overall_runs"] == [8.0] * 5 and rows[2]["judge_personalized_runs"] == [None] * 5


def test_exhausted_retries_are_counted_not_raised():
    with JudgeServer(status=503) as server:
        rows, counts = judge_answers([cogenesis_example("a")], ["note"], config_for(server, runs=1, max_retries=1))
    assert len(server.requests) == 2 * 2  # two aspects, one try plus one retry each
    assert counts == {"requests": 2, "parse_failures": 0, "request_failures": 2}
    assert rows[0]["judge_overall"] is None


def test_refused_requests_fail_fast_with_the_fix():
    with JudgeServer(status=401) as server:
        with pytest.raises(JudgeConfigurationError, match="HTTP 401.*--judge_model"):
            request_with_retries(config_for(server), "prompt")
    assert len(server.requests) == 1


def test_endpoint_accepts_base_or_full_url():
    assert JudgeConfig(url="https://api.example.com/v1/").endpoint == "https://api.example.com/v1/chat/completions"
    assert JudgeConfig(url="http://h/v1/chat/completions").endpoint == "http://h/v1/chat/completions"


def test_cogenesis_judge_through_the_evaluation_pipeline(tmp_path):
    rows = [{"id": f"u{i}", "input": f"Write note {i}.", "output": "ref", "output_without_context": "x",
             "personalized_input": f"Intro\n\n## User Profile\nName: P{i}\n\n## User Writing History\nTask: a\n"
                                   f"Content: b\n\n## Task\nWrite note {i}.\n"} for i in range(3)]
    (tmp_path / "cogenesis.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    predictions = tmp_path / "llm_wo.jsonl"
    predictions.write_text("".join(json.dumps({"id": f"u{i}", "method": "llm_wo", "output": f"note {i}"}) + "\n"
                                   for i in (0, 2)))
    assert load_task("cogenesis", tmp_path)[0].meta == {"profile": "Name: P0", "writing_history": "Task: a\nContent: b"}
    with JudgeServer() as server:
        (result,) = evaluate_prediction_files([predictions], Scorers(judge=config_for(server, runs=2)),
                                              tasks=["cogenesis"], data_dir=tmp_path)
    assert len(server.requests) == 2 * 2 * 2
    assert any("Name: P2" in r["body"]["messages"][0]["content"] for r in server.requests)
    assert result["averages"] == {"judge_overall": 8.0, "judge_personalized": 6.0}
    assert result["missing_ids"] == ["u1"] and result["judge_counts"]["parse_failures"] == 0
    with pytest.raises(ValueError, match="--judge_url"):
        evaluate_prediction_files([predictions], Scorers(), tasks=["cogenesis"], data_dir=tmp_path)

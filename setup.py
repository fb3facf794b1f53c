"""costeer-jax: decoding-time personalization by small-model steering, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="costeer_jax",
    version="0.1.0",
    description="CoSteer / SpecSteer decoding-time personalization as batched, jitted JAX kernels",
    packages=find_packages(include=["costeer_jax", "costeer_jax.*"]),
    package_data={"costeer_jax.reproduction": ["paper_numbers.json"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax",  # LoRA training (costeer_jax/training)
        "orbax-checkpoint",  # resumable training checkpoints
        "numpy",
        "transformers>=4.50",
        "tokenizers",
        "safetensors",
        "gguf>=0.10",
        "sentencepiece",
        "absl-py",
        "datasets",
        "tqdm",
        "rouge-score",
        "nltk",
        "scipy",
        "bm25s",
        "matplotlib",
    ],
    extras_require={
        # torch only for parity tests against transformers' PyTorch models; the runtime never imports it.
        # Pinned: a CPU build of 2.13.0 lies on the CI machine's disk, an unpinned torch pulls a CUDA build.
        # peft: the LoRA parity test (our adapters against peft's on the same transformers model)
        # and benchmarks/bench_lora.py's torch baseline.
        # pytest >= 9: faulthandler_exit_on_timeout (pytest.ini's per-test timeout).
        "dev": ["torch==2.13.0", "accelerate", "peft==0.21.2", "pytest>=9", "pytest-xdist>=3.8"],
        "reward": ["torch==2.13.0", "accelerate"],
    },
)

"""costeer-jax: decoding-time personalization by small-model steering, as batched jitted JAX kernels."""

__version__ = "0.1.0"

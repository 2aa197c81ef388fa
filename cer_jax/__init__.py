"""cer_jax: compound facial expression recognition with a late-fused ensemble (JAX / Flax NNX)."""

__version__ = "0.1.0"

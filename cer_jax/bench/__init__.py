"""Benchmarks that print figures for the README (never run by the tests' timers)."""

# The recipes' three models: what `cer_jax.bench` times and `cer_jax.bench.costs` counts.
DEFAULT_MODELS = "vit:B/16,resnet:50,manet"

"""`python -m cer_jax.bench`: see cer_jax.bench.main."""

from cer_jax.bench.main import main

if __name__ == "__main__":
    main()

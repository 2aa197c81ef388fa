"""`python -m cer_jax.bench`: see cer_jax.bench.main."""

from absl import flags

from cer_jax import cli
from cer_jax.bench import main as bench_main

if __name__ == "__main__":
    # --help shows the bench's own text and flags (absl reads them from the __main__ module).
    __doc__ = bench_main.__doc__  # noqa: A001
    flags.adopt_module_key_flags(bench_main)
    cli.define_traceback_flag()  # defined here, so that --help lists it with the bench's flags
    bench_main.main()

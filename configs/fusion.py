r"""Late fusion of trained members: `python -m cer_jax.fuse --config=configs/fusion.py ...`.

The defaults live in the package (`cer_jax.fusion.config`, documented there) so that
`python -m cer_jax.fuse` works without this file, which holds none of them: change one with
`--config.KEY=VALUE`, or in a file of your own whose get_config() calls this one and sets it.
"""

from cer_jax.fusion.config import ALL_STRATEGIES, get_config

__all__ = ["ALL_STRATEGIES", "get_config"]

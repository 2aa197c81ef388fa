"""Input pipeline: dataset / input config defaults, sources (TFDS or image folder), augment.

Import `cer_jax.data.pipeline` for the iterators; TensorFlow is only imported when a dataset is
opened.
"""

from cer_jax.data.config import dataset_defaults, input_defaults
from cer_jax.data.sources import DataConfigError, DatasetInfo

__all__ = ["DataConfigError", "DatasetInfo", "dataset_defaults", "input_defaults"]

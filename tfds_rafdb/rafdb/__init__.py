"""RAF-DB TFDS builder: importing this package registers the `rafdb` dataset.

Depends on TFDS (and its absl), etils.epath, numpy and Pillow only, never on cer_jax.
"""

from tfds_rafdb.layout import ABAW7_CLASSES, BASIC_CLASSES, COMPOUND_CLASSES, RafDbLayoutError

from .rafdb_dataset_builder import (
    Builder,
    DataDirError,
    RafDbConfig,
    SourceMismatchError,
    build,
    check_built_from,
)

__all__ = [
    "ABAW7_CLASSES",
    "BASIC_CLASSES",
    "COMPOUND_CLASSES",
    "Builder",
    "DataDirError",
    "RafDbConfig",
    "RafDbLayoutError",
    "SourceMismatchError",
    "build",
    "check_built_from",
]

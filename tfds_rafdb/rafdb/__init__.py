"""RAF-DB TFDS builder: importing this package registers the `rafdb` dataset."""

from .layout import RafDbLayoutError
from .rafdb_dataset_builder import (
    ABAW7_CLASSES,
    BASIC_CLASSES,
    COMPOUND_CLASSES,
    Builder,
    RafDbConfig,
    build,
)

__all__ = [
    "ABAW7_CLASSES",
    "BASIC_CLASSES",
    "COMPOUND_CLASSES",
    "Builder",
    "RafDbConfig",
    "RafDbLayoutError",
    "build",
]

"""TFDS builder tests on the tiny synthetic trees in dummy_data/ (one test case per config).

`dummy_data/` is made by `python tools/make_rafdb_dummy_data.py`; every class has 2-3 train
images (so 1 goes to `validation`) and 1 test image.
"""

import tensorflow_datasets as tfds

from tfds_rafdb import layout

from . import rafdb_dataset_builder

_DUMMY_DATA = rafdb_dataset_builder.Builder.code_path.parent / "dummy_data"


class _RafDbTestCase(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = rafdb_dataset_builder.Builder
    # `train` holds `validation` and `train_fit` (layout.SPLITS_WITHIN, which fusion's leak
    # report reads); the other splits are disjoint.
    OVERLAPPING_SPLITS = list(layout.SPLITS_WITHIN)
    SKIP_CHECKSUMS = True  # nothing is downloaded

    def test_session(self, *args, **kwargs):
        """tf.test.TestCase's graph-mode session helper; `__test__` keeps pytest from collecting
        (and reporting as skipped) what is not a test."""
        return super().test_session(*args, **kwargs)

    test_session.__test__ = False


class CompoundTest(_RafDbTestCase):
    BUILDER_CONFIG_NAMES_TO_TEST = ["compound"]
    EXAMPLE_DIR = _DUMMY_DATA / "compound"
    SPLITS = {"train": 24, "validation": 11, "train_fit": 13, "test": 11}


class CompoundAbaw7Test(_RafDbTestCase):
    BUILDER_CONFIG_NAMES_TO_TEST = ["compound_abaw7"]
    EXAMPLE_DIR = _DUMMY_DATA / "compound"
    # RAF-DB ids 2, 6, 7, 10 are left out: 4 of the 11 test images and 10 of the 24 train images.
    SPLITS = {"train": 14, "validation": 7, "train_fit": 7, "test": 7}


class BasicTest(_RafDbTestCase):
    BUILDER_CONFIG_NAMES_TO_TEST = ["basic"]
    EXAMPLE_DIR = _DUMMY_DATA / "basic"
    SPLITS = {"train": 16, "validation": 7, "train_fit": 9, "test": 7}


del _RafDbTestCase  # keep pytest / absltest from collecting the base class


if __name__ == "__main__":
    tfds.testing.test_main()

"""TFDS builders for RAF-DB. Importing `tfds_rafdb.rafdb` registers the `rafdb` dataset.

`tfds_rafdb.layout` (RAF-DB's class names, file names and split ids) imports no TFDS, so the
synthetic generator can share those facts without pulling in TFDS or TensorFlow.
"""

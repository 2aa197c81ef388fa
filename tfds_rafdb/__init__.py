"""TFDS builders for RAF-DB. Importing `tfds_rafdb.rafdb` registers the `rafdb` dataset."""

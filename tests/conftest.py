"""Shared, session-scoped fixtures: a synthetic-data cache and trained smoke workdirs.

Expensive fixtures run only when a test asks for them, once per session (per xdist worker;
tests that share one carry the same `xdist_group`). Every test process, and every process a
test starts, shares one fresh XLA compilation cache: the same model and shapes compile once.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import ml_collections
import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

# Before JAX starts (the environment reaches subprocesses too). A new folder per test session,
# shared by its xdist workers, so no cache survives from an earlier run of different code.
# The folder is this run's own unless the user named one, and goes when the run ends.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
_OWN_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"cer_jax_xla_{_RUN}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from cer_jax import huge_pages  # noqa: E402
from cer_jax.config_loading import load_config  # noqa: E402

# The xdist workers and the command-line tools that tests start get malloc's huge pages from
# their start, as a CLI restarts itself to have them (so the tools do not restart).
os.environ.update(huge_pages.wanted_environment() or {})


def pytest_unconfigure(config):
    """The controlling process removes the run's compilation cache (tens of MB a run)."""
    if _OWN_XLA_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_cache_dir(tmp_path_factory) -> pathlib.Path:
    """A `dataset.cache_dir` shared by the session: each synthetic tree is drawn and built once."""
    return tmp_path_factory.mktemp("cer_jax_cache")


def smoke_config(name: str, cache_dir: pathlib.Path, **overrides) -> ml_collections.ConfigDict:
    """configs/<name>.py:smoke on the session's synthetic data, with dotted-key overrides."""
    config = load_config(f"configs/{name}.py:smoke")
    config.dataset.cache_dir = str(cache_dir)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        assert leaf in node, f"no config key {key}: a misspelt override would be silently added"
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, synthetic_cache_dir) -> dict[str, tuple[pathlib.Path, dict]]:
    """{"vit", "manet", "resnet50"} -> (workdir, train_and_evaluate's result) of a finished,
    exported smoke training run on synthetic RAF-DB compound."""
    from cer_jax import trainer

    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for name in ("vit", "manet", "resnet50"):
        workdir = root / name
        config = smoke_config(name, synthetic_cache_dir)
        runs[name] = (workdir, trainer.train_and_evaluate(config, str(workdir)))
    return runs


# A remote bucket without network: gs://test-bucket/ served by epath's own test mock.

BUCKET = "gs://test-bucket"
# The backend functions that take one path (rename / replace: Bucket.move; copy and walk are
# unused).
_MOCKED = ("exists", "isdir", "open", "stat", "listdir", "glob", "makedirs", "mkdir", "remove",
           "rmtree")


class Killed(BaseException):
    """A SIGKILL in the middle of something: nothing after it runs but finally blocks."""


class Bucket:
    """gs://test-bucket/ as seen through the mocked epath, backed by the local folder `root`."""

    def __init__(self, root):
        self.root = root
        self.seen: list[str] = []  # every path epath's backend was asked about
        # A folder move killed (SIGKILL) after this many objects: None, never.
        self.killed_after: int | None = None

    def local(self, path) -> str:
        path = os.fspath(path)
        if path == BUCKET or path.startswith(BUCKET + "/"):
            return os.fspath(self.root) + path[len(BUCKET):]
        return path

    def remote(self, local_path) -> str:
        """The gs:// path of a file under `root`."""
        return BUCKET + "/" + os.path.relpath(local_path, self.root).replace(os.sep, "/")

    def call(self, original_fn, path, *args, **kwargs):
        self.seen.append(os.fspath(path))
        return original_fn(self.local(path), *args, **kwargs)

    def move(self, original_fn, path, dst, *args, **kwargs):
        """rename / replace. In the bucket, as on GCS: no folder moves at once, each object is
        copied and then deleted (a rename onto something that is there fails)."""
        self.seen += [os.fspath(path), os.fspath(dst)]
        if not os.fspath(path).startswith(BUCKET) or not os.fspath(dst).startswith(BUCKET):
            return original_fn(self.local(path), self.local(dst), *args, **kwargs)
        source, target = self.local(path), self.local(dst)
        if original_fn.__name__ == "rename" and os.path.exists(target):
            raise FileExistsError(f"{dst} already exists")
        if os.path.isdir(source):
            objects = sorted(os.path.relpath(os.path.join(folder, name), source)
                             for folder, _, names in os.walk(source) for name in names)
            for name in objects:  # GCS lists (and a rename moves) objects in name order
                if self.killed_after is not None:
                    if self.killed_after == 0:
                        raise Killed
                    self.killed_after -= 1
                os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
                shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
                os.remove(os.path.join(source, name))
            shutil.rmtree(source)
        else:
            shutil.copyfile(source, target)
            os.remove(source)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    # With TensorFlow installed, epath would send gs:// to its TensorFlow backend (around the
    # mock, and to the network); without it, every scheme goes to the mocked backend. epath
    # caches that choice at its first gs:// path (TFDS makes one when it builds a dataset), so
    # the cache is cleared on the way in and out.
    monkeypatch.setenv("EPATH_USE_TF", "false")
    gpath._is_tf_installed.cache_clear()
    store = Bucket(tmp_path / "bucket")
    store.root.mkdir()
    try:
        with epath_testing.mock_epath(**dict.fromkeys(_MOCKED, store.call), rename=store.move,
                                      replace=store.move):
            yield store
    finally:
        monkeypatch.delenv("EPATH_USE_TF")
        gpath._is_tf_installed.cache_clear()

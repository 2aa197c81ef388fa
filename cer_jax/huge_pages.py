"""Huge pages for XLA:CPU's step buffers: a CPU run restarts itself once with glibc's malloc
set to use them (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`).

Why: XLA:CPU takes each execution's temporary buffer from malloc (ResNet-50 training at batch 8:
1.4 GB), malloc serves a block that large with a fresh mmap and unmaps it when the step ends, so
every step faults in every 4 KiB page again. On a 2-core VM that was 342,000 page faults and
0.8 s of kernel time per ResNet-50 training step; with malloc asking for transparent huge pages
(THP) it is under 2,000 faults and the step is 1.3-1.6x faster (BENCHMARKS.md, "Huge pages").

glibc reads its tunables once, at process start, hence the restart: `os.execve` of the same
command line (same pid), before any JAX work. It happens only where it helps and nothing else
changes: Linux with glibc >= 2.35 (the first with the tunable), THP in "madvise" mode (with
"always" every large mapping gets huge pages anyway, with "never" none can), and JAX bound to run
on CPU (JAX_PLATFORMS is "cpu", or no GPU / TPU plugin is installed), so GPU and TPU runs never
restart. A GLIBC_TUNABLES that already names glibc.malloc.hugetlb is left alone: set
`glibc.malloc.hugetlb=0` there to opt out.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
FIRST_GLIBC_WITH_TUNABLE = (2, 35)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode ("always", "madvise" or "never"), None where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def glibc_version() -> tuple[int, ...] | None:
    """The running glibc's version (not `platform.libc_ver`'s: the newest symbol version the
    Python binary was linked against), None for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def accelerator_plugin_installed() -> bool:
    """Whether JAX would find a GPU or TPU backend: the places jax's own plugin discovery looks
    (the `jax_plugins` namespace and entry points, and libtpu)."""
    if importlib.util.find_spec("libtpu") is not None:
        return True
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    namespace = importlib.util.find_spec("jax_plugins")
    locations = namespace.submodule_search_locations if namespace is not None else None
    return bool(locations and any(True for _ in pkgutil.iter_modules(locations)))


def runs_on_cpu(environ: Mapping[str, str]) -> bool:
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugin_installed()


def restart_environment(environ: Mapping[str, str], *, system: str,
                        glibc: tuple[int, ...] | None, thp: str | None,
                        on_cpu: bool) -> dict[str, str] | None:
    """The environment to restart with, or None to carry on as is (see the module docstring)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (system != "Linux" or glibc is None or glibc < FIRST_GLIBC_WITH_TUNABLE
            or thp != "madvise" or not on_cpu or TUNABLE in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))}


def wanted_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """`restart_environment` for this machine and process."""
    machine = dict(system=platform.system(), glibc=glibc_version(), thp=thp_mode())
    # The plugin scan only where a restart is otherwise due.
    if restart_environment(environ, **machine, on_cpu=True) is None:
        return None
    return restart_environment(environ, **machine, on_cpu=runs_on_cpu(environ))


def restart_if_useful() -> None:
    """Restart this command-line process with huge pages for malloc where that helps; returns
    (without restarting) everywhere else. The first thing a CLI's entry point does."""
    environ = wanted_environment()
    if environ is None or not sys.executable or not sys.orig_argv:  # embedded interpreters
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)

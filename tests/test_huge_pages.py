"""A CPU run of a command-line tool restarts once with malloc's huge pages, and only where that
helps (cer_jax.huge_pages)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from cer_jax import huge_pages

HELPS = dict(system="Linux", glibc=(2, 36), thp="madvise", on_cpu=True)


def test_restart_environment_adds_the_tunable_to_the_callers_own():
    assert huge_pages.restart_environment({"A": "1"}, **HELPS) == {
        "A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    given = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert huge_pages.restart_environment(given, **HELPS)["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


@pytest.mark.parametrize("change", [
    dict(system="Darwin"),
    dict(glibc=None),  # musl and other C libraries
    dict(glibc=(2, 34)),  # before the tunable
    dict(thp="always"),  # every large mapping has huge pages already
    dict(thp="never"),
    dict(thp=None),  # no THP in this kernel
    dict(on_cpu=False),  # GPU / TPU runs never restart
])
def test_no_restart_where_it_cannot_help(change):
    assert huge_pages.restart_environment({}, **{**HELPS, **change}) is None


@pytest.mark.parametrize("tunables", ["glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=1",
                                      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"])
def test_a_tunable_already_set_is_left_alone(tunables):
    """It is also how the restarted process knows to carry on (and how to opt out)."""
    assert huge_pages.restart_environment({"GLIBC_TUNABLES": tunables}, **HELPS) is None


def test_thp_mode_reads_the_kernels_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.thp_mode(str(path)) == "madvise"
    assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


def test_glibc_version_is_the_running_librarys():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        running = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert huge_pages.glibc_version() == tuple(int(p) for p in running.split("."))


@pytest.mark.parametrize(("platforms", "on_cpu"), [("cpu", True), ("cuda", False),
                                                   ("tpu,cpu", False), (" cpu ", True)])
def test_jax_platforms_decides_the_backend(platforms, on_cpu):
    assert huge_pages.runs_on_cpu({"JAX_PLATFORMS": platforms}) is on_cpu


# A tool run through cli.run: where it starts, and what its main finds (its environment, its
# arguments, and how much of a fresh 64 MiB block from malloc the kernel backs with huge pages).
TOOL = textwrap.dedent("""
    import ctypes
    import os
    from cer_jax import cli

    def anon_huge_kib():
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))

    print("start", os.getpid(), flush=True)

    def main(argv):
        # malloc itself: numpy asks for huge pages for its own large arrays.
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        before = anon_huge_kib()
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)  # touched: the kernel backs it now
        print("main", os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), argv[1:],
              (anon_huge_kib() - before) // 1024, "MiB")

    cli.run(main)
""")


def run_tool(tunables: str | None) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAX_PLATFORMS"] = "cpu"
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    proc = subprocess.run([sys.executable, "-c", TOOL, "first", "second"], env=env,
                          capture_output=True, text=True, check=True)
    return [line.split(" ", 3) for line in proc.stdout.splitlines()]


needs_thp_madvise = pytest.mark.skipif(
    huge_pages.wanted_environment({"JAX_PLATFORMS": "cpu"}) is None,
    reason="needs Linux, glibc >= 2.35 and THP in madvise mode")


@needs_thp_madvise
def test_a_cpu_tool_restarts_once_and_mallocs_on_huge_pages():
    start, restarted, main = run_tool(None)
    assert start[0] == restarted[0] == "start" and start[1] == restarted[1]  # the same process
    assert main[:3] == ["main", start[1], "glibc.malloc.hugetlb=1"]
    assert main[3].startswith("['first', 'second'] ")  # the same command line
    assert int(main[3].split()[-2]) >= 16  # MiB of the 64 MiB block on huge pages


@needs_thp_madvise
def test_a_tool_whose_caller_opted_out_does_not_restart():
    start, main = run_tool("glibc.malloc.hugetlb=0")
    assert start[0] == "start" and main[:3] == ["main", start[1], "glibc.malloc.hugetlb=0"]
    assert int(main[3].split()[-2]) == 0  # 4 KiB pages only

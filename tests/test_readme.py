"""README.md, BENCHMARKS.md and the builder's README against the code: every command they
show names flags and config keys that exist, and every command-line tool is in the README's
reference with all its flags. A renamed flag or key used to leave a README command that stops
with a flag error, and a new flag could stay undocumented."""

from __future__ import annotations

import concurrent.futures
import functools
import pathlib
import re
import subprocess
import sys

import pytest

from cer_jax import config_loading

# One worker asks every tool for its flags, once (--helpfull of 11 tools, ~30 s of CPU).
pytestmark = pytest.mark.xdist_group("readme")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ("README.md", "BENCHMARKS.md", "tfds_rafdb/rafdb/README.md")
TRAINING_CONFIGS = ("configs/vit.py", "configs/vit.py:smoke", "configs/vit.py:follow_up",
                    "configs/manet.py", "configs/manet.py:smoke", "configs/resnet50.py",
                    "configs/resnet50.py:smoke", "configs/resnet50.py:follow_up")
# `python -m MODULE` / `python tools/X.py`, the tools a command of the docs may run.
TOOL = re.compile(r"python3? (?:-m ((?:cer_jax|tfds_rafdb)[\w.]*)|(tools/\w+\.py))")
# The shell scripts, whose options are the `--x)` patterns of their `case`s.
SCRIPT = re.compile(r"(?<![\w/])((?:bench|launch)/\w+\.sh)")


def _commands(text: str) -> list[str]:
    """Each line of a code block (continuations joined, comments cut) and each code span."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines += [line.split(" #")[0] for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    return lines + re.findall(r"`([^`]+)`", prose)


def _tool_runs(doc: str) -> list[tuple[str, str]]:
    """(tool, its arguments up to the next shell operator) for every tool run the doc shows."""
    runs = []
    for command in _commands((ROOT / doc).read_text()):
        for m in [*TOOL.finditer(command), *SCRIPT.finditer(command)]:
            tool = next(g for g in m.groups() if g)
            runs.append((tool, re.split(r"&&|;|\|", command[m.end():])[0]))
    return runs


def _own(header: str) -> bool:
    """A --helpfull section of this project's flags: a module of it, or a file of it (the
    program's own, wherever the package is installed)."""
    packages = ("cer_jax", "tfds_rafdb", "tools")
    return (header.split(".")[0] in packages
            or any(part in packages for part in pathlib.PurePath(header).parts[:-1]))


def _helpfull(tool: str) -> str:
    cmd = [sys.executable, *([tool] if tool.endswith(".py") else ["-m", tool]), "--helpfull"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, f"{tool} --helpfull: {proc.stderr[-2000:]}"
    return proc.stdout


@functools.cache
def _tool_flags() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """{tool: (every flag absl takes, `--[no]x` as x and nox; the tool's own flags)}, from each
    tool's --helpfull, four tools at a time (most import JAX: seconds each)."""
    tools = sorted({*_reference_tools(), *(t for doc in DOCS for t, _ in _tool_runs(doc)
                                           if not t.endswith(".sh"))})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        helps = dict(zip(tools, pool.map(_helpfull, tools), strict=True))
    result = {}
    for tool, text in helps.items():
        every, own, header = set(), set(), ""
        for line in text.splitlines():
            if re.fullmatch(r"\S.*:", line):
                header = line[:-1]
            elif m := re.match(r"  --(\[no\])?([\w-]+):", line):
                every |= {m[2], f"no{m[2]}"} if m[1] else {m[2]}
                own |= {m[2]} if _own(header) else set()
        result[tool] = (frozenset(every), frozenset(own))
    return result


def _script_options(script: str) -> set[str]:
    text = (ROOT / script).read_text()
    if script.startswith("launch/"):
        text += (ROOT / "launch" / "common.sh").read_text()  # parse_flags
    return set(re.findall(r"^\s*(?:-[\w-]+\s*\|\s*)*--([\w-]+)(?:\s*\|\s*-[\w-]+)*\s*\)",
                          text, re.M))


def _flags(tool: str) -> frozenset[str]:
    if tool.endswith(".sh"):
        return frozenset(_script_options(tool))
    return _tool_flags()[tool][0]


def _keys(config, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in config.items():
        keys.add(prefix + name)
        if hasattr(value, "items"):
            keys |= _keys(value, f"{prefix}{name}.")
    return keys


@functools.cache
def _config_keys(spec: str) -> frozenset[str]:
    return frozenset(_keys(config_loading.load_config(spec)))


def _all_config_keys() -> set[str]:
    return set().union(*(_config_keys(s) for s in (*TRAINING_CONFIGS, "configs/fusion.py")))


@pytest.mark.parametrize("doc", DOCS)
def test_every_flag_of_a_documented_command_exists(doc):
    unknown = []
    for tool, args in _tool_runs(doc):
        for flag in re.findall(r"(?<![\w-])--([\w-]+)(?![\w-]*\.)", args):
            if flag not in _flags(tool):
                unknown.append(f"{tool} --{flag}")
    assert not unknown, f"{doc} shows flags these tools do not have: {sorted(set(unknown))}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_config_key_the_docs_override_exists(doc):
    """In a command with `--config=FILE[:ARG]`, the key is that config's; elsewhere (prose,
    launch scripts' overrides), one of the shipped configs'."""
    text = (ROOT / doc).read_text()
    unknown = []
    for command in _commands(text):
        named = re.search(r"--config[= ](configs/[\w.]+\.py(?::\w+)?)", command)
        keys = _config_keys(named.group(1)) if named else _all_config_keys()
        for key in re.findall(r"--config\.([\w.]*\w)", command):
            if key not in keys:
                unknown.append(f"--config.{key}" + (f" ({named.group(1)})" if named else ""))
    assert not unknown, f"{doc} overrides config keys that do not exist: {sorted(set(unknown))}"


def _reference() -> str:
    """The README's "Command-line reference" section."""
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Command-line reference", 1)[1].split("\n## ", 1)[0]


def _reference_tools() -> list[str]:
    return [m.group(1) or m.group(2) for m in TOOL.finditer(_reference())]


def test_every_command_line_tool_is_in_the_reference_with_all_its_flags():
    """Each module that runs as a program, and each shell script, is in "Command-line
    reference", and each flag it defines (not absl's or a library's) is named in that section."""
    programs = {str(p.relative_to(ROOT)) for p in (ROOT / "tools").glob("*.py")}
    for path in [*(ROOT / "cer_jax").rglob("*.py"), *(ROOT / "tfds_rafdb").rglob("*.py")]:
        if path.name.endswith("_test.py"):
            continue
        if path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text():
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            programs.add(module.removesuffix(".__main__"))
    listed = _reference_tools()
    assert programs - set(listed) == set(), "programs missing from the README's reference"
    reference = _reference()
    undocumented = {tool: sorted(f for f in _tool_flags()[tool][1]
                                 if f"--{f}" not in reference)
                    for tool in listed}
    scripts = {str(p.relative_to(ROOT)) for p in [*(ROOT / "bench").glob("*.sh"),
                                                   *(ROOT / "launch").glob("*.sh")]}
    scripts.discard("launch/common.sh")  # sourced by the three launch scripts
    assert scripts - set(SCRIPT.findall(reference)) == set(), "scripts missing from the reference"
    for script in scripts:  # --dry_run: the spelling a launch script refuses with the fix
        undocumented[script] = sorted(f for f in _script_options(script) - {"help", "dry_run"}
                                      if f"--{f}" not in reference)
    assert {t: f for t, f in undocumented.items() if f} == {}


def test_a_wrong_flag_or_key_in_a_command_is_found():
    """The extraction itself: a misspelt flag and a misspelt key are seen."""
    text = ("```bash\npython -m cer_jax.bench --modles=vit \\\n  --steps=2\n```\n"
            "and `python -m cer_jax.train --config=configs/vit.py --config.optimizer.lrr=1`")
    (command_block, span) = _commands(text)
    assert command_block.split() == ["python", "-m", "cer_jax.bench", "--modles=vit",
                                     "--steps=2"]
    assert "modles" not in _flags("cer_jax.bench") and "steps" in _flags("cer_jax.bench")
    assert "optimizer.lrr" not in _config_keys("configs/vit.py")
    assert "optimizer.lr" in _config_keys("configs/vit.py")
    assert re.findall(r"--config\.([\w.]*\w)", span) == ["optimizer.lrr"]


def _strings(path: pathlib.Path) -> list[str]:
    """Every string literal of a module, implicit concatenations joined (an f-string's literal
    parts joined, its fields left out)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def test_every_readme_section_a_message_names_exists():
    """A message that sends the user to "README, 'SECTION'" names a heading the README has (one
    named a section by an old title, which a reader could not find)."""
    headings = {line.lstrip("#").strip() for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("#")}
    named, missing = [], []
    for path in [*(ROOT / "cer_jax").rglob("*.py"), *(ROOT / "tfds_rafdb").rglob("*.py")]:
        for text in _strings(path):
            for section in re.findall(r"README, ['\"]?([^'\")]+?)['\"]?\)", text):
                named.append(section)
                if section not in headings:
                    missing.append(f"{path.relative_to(ROOT)}: {section!r}")
    assert len(named) >= 4  # the search itself finds the messages
    assert not missing, sorted(set(missing))


def _layout_paths() -> list[str]:
    """The first column of the README's layout table ("| package / folder | job |"): each
    backticked path, a bare name beside one (`optim.py`) taken in the first one's folder."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| package / folder | job |", 1)[1].split("\n\n", 1)[0]
    found = []
    for row in table.splitlines()[1:]:
        folder = ""
        for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if "/" in name.rstrip("/"):
                folder = str(pathlib.PurePath(name).parent)
                found.append(name)
            else:
                found.append(f"{folder}/{name}" if folder else name)
    return found


def test_every_file_the_layout_table_and_the_links_name_exists():
    """Each file or folder of the layout table, and each local link or image of the docs, is in
    the repository (a moved module left the table pointing at nothing)."""
    paths = _layout_paths()
    assert "cer_jax/optim.py" in paths and "bench/" in paths  # the extraction itself
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        paths += [str((ROOT / doc).parent.relative_to(ROOT) / target)
                  for target in re.findall(r"\]\(([^)#:]+)\)", text)]
    assert [p for p in paths if not (ROOT / p).exists()] == []


def test_the_readme_demo_run_is_the_demo_s_steps_and_estimate():
    """The README's demo table names each member's steps (demo.TRAIN_STEPS), and the earlier
    machine's timings it quotes are the demo's opening estimate (MEMBER_SECONDS, OTHER_SECONDS):
    a changed step count or estimate left the README describing another run."""
    from cer_jax import demo

    readme = (ROOT / "README.md").read_text()
    rows = {name: re.search(rf"\| {name} \([^|\n]*, ([\d,]+) steps\) \| member \|", readme)
            for name in demo.TRAIN_STEPS}
    assert {n: m and int(m[1].replace(",", "")) for n, m in rows.items()} == demo.TRAIN_STEPS
    m = re.search(r"took (\d+) s \(ViT (\d+) s, MA-Net (\d+) s, ResNet (\d+) s: the timings of "
                  r"the demo's opening estimate\)", readme.replace("\n", " "))
    assert m, "README no longer quotes the opening estimate's timings"
    total, vit, manet, resnet = map(int, m.groups())
    assert {"vit": vit, "manet": manet, "resnet50": resnet} == demo.MEMBER_SECONDS
    assert total == sum(demo.MEMBER_SECONDS.values()) + demo.OTHER_SECONDS


def test_every_config_key_the_docs_name_in_prose_exists():
    """A key named in a code span without `--config.` (`input.num_data_shards`,
    `model.gelu_approximate`) is one of the shipped configs' (a renamed key left the prose
    sending the reader to a key that is refused); file names (`model.safetensors`) are not keys."""
    keys = _all_config_keys()
    sections = "|".join(sorted({key.split(".")[0] for key in keys if "." in key}))
    files = re.compile(r"\.(json|py|npz|safetensors|md|txt|bin|pth|h5|msgpack|ckpt|png)$")
    unknown, named = [], 0
    for doc in DOCS:
        prose = re.sub(r"```.*?```", "", (ROOT / doc).read_text(), flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            for key in re.findall(rf"(?<![\w./-])((?:{sections})\.[a-z_][\w.]*\w)", span):
                if not files.search(key):
                    named += 1
                    unknown += [f"{doc}: {key}"] if key not in keys else []
    assert named > 40  # the search itself finds the keys
    assert not unknown, sorted(set(unknown))

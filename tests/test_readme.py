"""The README and docs/*.md say what is true: their code runs and their links lead somewhere.

Every ```python block of README.md and docs/*.md is run as a program of its
own (``python prog.py``) in a fresh temporary directory.  It must exit with
status 0 and print nothing on stderr, and every profile it writes is read
back: each gzip file there must decode as a valid profile.proto and be read
by the real ``go tool pprof -top``, and each file name the block spells as
a string ending in ``.pb.gz`` or ``.pprof`` must have been written.

A block runs as it is, unless the line just before its fence is one of
these HTML comments (invisible on GitHub):

* ``<!-- run with stubs: NAME[, NAME] -->``: the block is a fragment that
  uses names it does not define; the stubs of ``STUBS`` with those names
  are put before it.  Each stub says what it stands in for.
* ``<!-- not run: REASON -->``: the block is not run.

Any other comment right before a python block is an error, so a misspelt
marker cannot silently skip a block.  The README's blocks may carry no
marker: the README says they are complete programs.

Python code that binds ``127.0.0.1:6060`` is run with ``127.0.0.1:0`` (any
free port), so the test never collides with a server already on 6060.

Also checked: every relative link and ``#anchor`` in these files points at
a file and a heading that exist (GitHub's heading ids), and the README's
first set-up command profiles the bundled example and reads it back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pprof_tool import check_valid, load, pprof, tag_seconds

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

# The README is the newcomer's page; the reference lives in docs/.
README_MAX_LINES = 250

MYAPP = '''\
"""Stand-in for the application the contention docs import: a lock made at
import time (as a real module-level lock is) that two threads contend for."""
import threading
import time

_lock = threading.Lock()


def _hold():
    for _ in range(5):
        with _lock:
            time.sleep(0.005)


def serve():
    threads = [threading.Thread(target=_hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


main = serve
'''

STUBS: dict[str, str] = {
    # The application code that fragments call: small stand-ins that burn a
    # little CPU (so CPU profiles get samples) or keep some memory (heap).
    "calls": '''
def _burn(n=300_000):
    return sum(i * i for i in range(n))

def main():
    return _burn()

def hot_section():
    return _burn()

def build_the_index():
    global index
    index = {i: str(i) for i in range(50_000)}

request = object()

def handle(request):
    return _burn()

def run_batch():
    return _burn()

async def work():
    return _burn()
''',
    # `import myapp`: a module written next to the program (see MYAPP).
    "myapp": f"import pathlib\npathlib.Path('myapp.py').write_text({MYAPP!r})\n",
    # A Flask `app`, and Django's get_wsgi_application() (Django is not a
    # test dependency: any WSGI app stands in for what it returns).
    "flask": '''
from flask import Flask
app = Flask("readme")

def get_wsgi_application():
    return Flask("django_stand_in").wsgi_app
''',
    # A Starlette `app` and `Mount`; the ASGI block follows the WSGI block,
    # whose `import pyproperf.http` it relies on.
    "starlette": '''
import pyproperf.http
from starlette.applications import Starlette
from starlette.routing import Mount
app = Starlette()
''',
}

MARKER = re.compile(r"<!--\s*(not run|run with stubs)\s*:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
PROFILE_NAME = re.compile(r"""["']([\w.%-]+\.(?:pb\.gz|pprof))["']""")


@dataclass
class Block:
    """One fenced code block of a Markdown file."""

    where: str  # "README.md:42": file and line of the opening fence
    lang: str
    code: str
    marker: str | None  # the HTML comment on the line before the fence, if any


def code_blocks(text: str, name: str) -> list[Block]:
    """The fenced blocks of ``text``, with indentation of list items removed."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines):
            close = re.match(r"^\s*(`{3,}|~{3,})\s*$", lines[i])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                break
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = before if before.startswith("<!--") else None
        lang = info.strip().split(" ")[0] if info.strip() else ""
        blocks.append(Block(f"{name}:{start + 1}", lang, "\n".join(body) + "\n", marker))
    return blocks


def python_blocks(page: Path) -> list[Block]:
    name = page.relative_to(ROOT).as_posix()
    return [b for b in code_blocks(page.read_text(), name) if b.lang == "python"]


def program_for(block: Block) -> str | None:
    """The program to run for ``block`` (stubs first), or None for a block marked not run."""
    prelude = []
    if block.marker is not None:
        m = MARKER.fullmatch(block.marker)
        assert m, f"{block.where}: unknown comment before a python block: {block.marker}"
        kind, arg = m.groups()
        assert arg, f"{block.where}: {kind!r} needs a reason or stub names"
        if kind == "not run":
            return None
        for stub in (s.strip() for s in arg.split(",")):
            assert stub in STUBS, f"{block.where}: no stub named {stub!r} (have {sorted(STUBS)})"
            prelude.append(f"# --- stub {stub!r} (tests/test_readme.py) ---\n{STUBS[stub]}\n")
    code = re.sub(r"127\.0\.0\.1:6060", "127.0.0.1:0", block.code)
    return "".join(prelude) + "# --- the documented block ---\n" + code


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPROPERF_HEAP")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def check_profiles(workdir: Path, expected: set[str], where: str) -> list[Path]:
    """Every gzip file in ``workdir`` is a profile go tool pprof reads; ``expected`` all exist."""
    missing = sorted(name for name in expected if not (workdir / name).is_file())
    assert not missing, f"{where}: the block names {missing} but did not write them"
    checked = []
    for path in sorted(p for p in workdir.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        is_gzip = path.read_bytes()[:2] == b"\x1f\x8b"
        if path.name in expected or path.name.endswith(".pb.gz"):
            assert is_gzip, f"{where}: {path.name} is not gzipped"
        if is_gzip:
            try:
                check_valid(load(path))
            except Exception as exc:
                raise AssertionError(f"{where}: {path.name} is not a valid profile: {exc}") from exc
            pprof("-top", path)  # raises AssertionError when go tool pprof cannot read it
            checked.append(path)
    return checked


def run_block(block: Block, workdir: Path) -> list[Path]:
    """Run ``block`` in ``workdir``; return the profiles checked.  Failures raise AssertionError."""
    program = program_for(block)
    assert program is not None, f"{block.where} is marked not run"
    (workdir / "prog.py").write_text(program)
    out = subprocess.run(
        [sys.executable, "prog.py"], cwd=workdir, env=subprocess_env(),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0 and not out.stderr, (
        f"{block.where} failed (status {out.returncode}):\n{out.stderr}\n--- program:\n{program}"
    )
    return check_profiles(workdir, set(PROFILE_NAME.findall(block.code)), block.where)


ALL_BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def test_every_page_has_python_blocks_found() -> None:
    readme = [b for b in ALL_BLOCKS if b.where.startswith("README.md")]
    assert len(readme) >= 3, "the README's tour has lost its code"
    assert any(b.where.startswith("docs/") for b in ALL_BLOCKS)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.where for b in ALL_BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    if block.where.startswith("README.md"):
        assert block.marker is None, f"{block.where}: the README's blocks are complete programs"
    if program_for(block) is None:
        pytest.skip(f"{block.where}: {block.marker}")
    run_block(block, tmp_path)


def test_readme_labels_example_shows_its_labels(tmp_path: Path) -> None:
    """The tour's labels program: each label value has samples, the thread's included."""
    labelled = next(b for b in python_blocks(README) if '"labels.pb.gz"' in b.code)
    run_block(labelled, tmp_path)
    profile = tmp_path / "labels.pb.gz"
    assert set(tag_seconds(profile, "endpoint")) == {"/users"}
    assert set(tag_seconds(profile, "job")) == {"resize", "nightly"}
    threads = tag_seconds(profile, "thread", "-tagfocus", "endpoint=/users")
    assert "MainThread" in threads and len(threads) == 2, threads  # the worker inherited it


def test_readme_is_short() -> None:
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines: move reference text to docs/"


def test_readme_first_setup_command(tmp_path: Path) -> None:
    """The first set-up command, after its venv and install, with this interpreter."""
    text = README.read_text()
    section = text.split("## Set-up: two commands", 1)[1]
    first = next(b for b in code_blocks(section, "README.md") if b.lang == "sh").code.strip()
    steps = first.split(" && ")
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -q ."], steps
    example = "tests/examples/logstats.py"
    assert example in first
    (tmp_path / "tests" / "examples").mkdir(parents=True)
    shutil.copy(ROOT / example, tmp_path / example)
    outputs = []
    for step in steps[2:]:
        args = step.split()
        assert args[0] == ".venv/bin/python", step
        out = subprocess.run(
            [sys.executable, *args[1:]], cwd=tmp_path, env=subprocess_env(),
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert out.returncode == 0, f"{step}:\n{out.stderr}"
        outputs.append(out.stdout)
    assert [p.name for p in check_profiles(tmp_path, {"cpu.pb.gz"}, "set-up")] == ["cpu.pb.gz"]
    assert "__main__.parse_line" in outputs[-1]  # top printed the example's functions


# -- links -------------------------------------------------------------------------------


def github_anchors(text: str) -> set[str]:
    """The ids GitHub gives the headings of a Markdown text."""
    outside = _outside_code(text)
    seen: dict[str, int] = {}
    anchors = set()
    for line in outside.splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _outside_code(text: str) -> str:
    """``text`` with fenced blocks blanked (line numbers kept)."""
    lines = text.splitlines()
    fence = None
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if fence is None and m:
            fence = m.group(1)
            lines[i] = ""
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            lines[i] = ""
    return "\n".join(lines)


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Relative links of ``page`` whose file or heading does not exist."""
    text = page.read_text() if text is None else text
    prose = re.sub(r"(`+)(?:(?!\1).)+?\1", "code", _outside_code(text))
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{target}: anchor into a file that is not Markdown")
            elif anchor not in github_anchors(text if dest == page else dest.read_text()):
                problems.append(f"{target}: no heading with that id in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_lead_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_docs_pages_are_all_in_the_index() -> None:
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"


# -- the checks can fail -------------------------------------------------------------------


def block(code: str, marker: str | None = None) -> Block:
    return Block("control.md:1", "python", textwrap.dedent(code), marker)


def test_control_a_block_that_raises_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="RuntimeError: boom"):
        run_block(block("raise RuntimeError('boom')\n"), tmp_path)


def test_control_a_block_that_warns_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="UserWarning"):
        run_block(block("import warnings\nwarnings.warn('careful')\n"), tmp_path)


def test_control_a_corrupt_profile_fails(tmp_path: Path) -> None:
    code = """
    import gzip
    with open("bad.pb.gz", "wb") as f:
        f.write(gzip.compress(b"not a profile"))
    """
    with pytest.raises(AssertionError, match=r"bad\.pb\.gz"):
        run_block(block(code), tmp_path)


def test_control_a_profile_not_written_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="did not write"):
        run_block(block('path = "never.pb.gz"\n'), tmp_path)


def test_control_a_good_block_passes_and_is_checked(tmp_path: Path) -> None:
    code = """
    import pyproperf
    with pyproperf.cpu_profile("ok.pb.gz"):
        sum(i * i for i in range(100_000))
    """
    assert [p.name for p in run_block(block(code), tmp_path)] == ["ok.pb.gz"]


def test_control_markers() -> None:
    text = textwrap.dedent("""\
        <!-- not run: needs a database -->
        ```python
        connect()
        ```

        <!-- run with stubs: calls -->
        ```python
        main()
        ```

        * a list item:

          <!-- run with stubs: nothing-by-that-name -->
          ```python
          x = 1
          ```

        <!-- not run -->
        ```python
        pass
        ```
        """)
    skipped, stubbed, unknown, bare = code_blocks(text, "m.md")
    assert program_for(skipped) is None
    program = program_for(stubbed)
    assert program is not None and "def main():" in program and program.endswith("main()\n")
    assert unknown.code == "x = 1\n"
    with pytest.raises(AssertionError, match="no stub named"):
        program_for(unknown)
    with pytest.raises(AssertionError, match="unknown comment"):
        program_for(bare)


def test_control_broken_links_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""\
        # Title: with `code`

        [ok](#title-with-code) [bad anchor](#nope) [bad file](missing.md)
        `[not a link](nowhere.md)`

        ```
        [in a code block](nowhere.md)
        ```
        """))
    assert broken_links(page) == ["#nope: no heading with that id in page.md",
                                  "missing.md: no such file"]

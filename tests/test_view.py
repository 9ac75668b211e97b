"""``python -m pyproperf view``: the HTML report, opened by a real headless Chromium.

The page is loaded from ``file://`` and driven over the DevTools protocol
(``tests/browser.py``): real mouse clicks on the flame graph, the label
buttons, the tabs.  What it shows is checked against what ``go tool pprof``
computes on the same file (``-tagfocus``, ``-tagignore``, ``-focus``,
``-unit=ns`` for exact numbers) and against the values the test put in.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyproperf import _view
from pyproperf._builder import Frame, ProfileBuilder
from pyproperf._pb import profile_pb2 as pb
from tests.browser import CHROMIUM_FLAGS, Browser, chromium_binary, png_colours
from tests.pprof_tool import pprof, top

# --- a two-thread profile whose source file exists ------------------------------------

SOURCE = textwrap.dedent(
    '''\
    def main():                 # 1
        parse()                 # 2
        render()                # 3


    def parse():                # 6
        tokenize()              # 7
        x = 1                   # 8


    def tokenize():             # 11
        return list("abc")      # 12


    def render():               # 15
        return "page"           # 16


    def run():                  # 19
        hash_all()              # 20
        compress()              # 21


    def hash_all():             # 24
        return hash("x")        # 25


    def compress():             # 28
        return b"z" * 9         # 29
    '''
)

# name -> (start line, {callee: call line}), leaf lines by name.
FUNCS = {
    "app.main": 1, "app.parse": 6, "app.tokenize": 11, "app.render": 15,
    "worker.run": 19, "worker.hash_all": 24, "shared.compress": 28,
}
# (thread, stack root first as (function, line)), sample count
STACKS = [
    ("MainThread", [("app.main", 2), ("app.parse", 7), ("app.tokenize", 12)], 40),
    ("MainThread", [("app.main", 2), ("app.parse", 8)], 15),
    ("MainThread", [("app.main", 3), ("app.render", 16)], 25),
    ("MainThread", [("app.main", 3), ("app.render", 16), ("shared.compress", 29)], 6),
    ("worker-1", [("worker.run", 20), ("worker.hash_all", 25)], 30),
    ("worker-1", [("worker.run", 21), ("shared.compress", 29)], 12),
    ("worker-1", [("worker.run", 21)], 3),
]
MAIN_ONLY = ("app.main", "app.parse", "app.tokenize", "app.render")
WORKER_ONLY = ("worker.run", "worker.hash_all")
NS = 10_000_000  # per sample


def write_profile(directory: Path) -> Path:
    """The two-thread profile (and app.py, the file its frames name)."""
    src = directory / "app.py"
    src.write_text(SOURCE)
    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")],
                       period_type=("cpu", "nanoseconds"), period=NS)
    rng = random.Random(11)
    for thread, stack, count in STACKS:
        frames = [Frame(name, str(src), FUNCS[name], line) for name, line in reversed(stack)]
        left = count
        while left:  # several samples per stack, as a real profile has
            n = min(left, rng.randint(1, 7))
            b.add(frames, [n, n * NS + rng.randint(0, 999)], labels=[("thread", thread)])
            left -= n
    path = directory / "two.pb.gz"
    path.write_bytes(b.to_gzip())
    return path


def expected(thread: str | None = None, *, ignore: str | None = None) -> dict[str, list[int]]:
    """name -> [flat, cum] in samples, from STACKS (the truth the test put in)."""
    out: dict[str, list[int]] = {}
    for t, stack, count in STACKS:
        if (thread is not None and t != thread) or t == ignore:
            continue
        names = [name for name, _ in stack]
        for name in set(names):
            out.setdefault(name, [0, 0])[1] += count
        out.setdefault(names[-1], [0, 0])[0] += count
    return out


def go_top(path: Path, *args: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Go's total and rows (flat, cum) in nanoseconds: ``-top -unit=ns -nodefraction=0``.

    The total is that of the samples the filters keep: with every node shown,
    what Go's "Showing nodes accounting for" says (its "of ... total" is the
    whole profile's, whatever the filters).
    """
    text = pprof("-top", "-unit=ns", "-nodefraction=0", "-sample_index=cpu", *args, path)
    total = int(re.search(r"accounting for (\d+)ns", text).group(1))  # type: ignore[union-attr]
    rows = {}
    for m in re.finditer(r"^\s*(\d+)(?:ns)?\s+\S+\s+\S+\s+(\d+)(?:ns)?\s+\S+\s+(\S.*)$", text,
                         re.M):
        rows[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    return total, rows


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(width=1200, height=800) as b:
        yield b


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The two-thread profile and its report, written by the command line."""
    d = tmp_path_factory.mktemp("two")
    path = write_profile(d)
    out = cli("view", str(path), "-o", str(d / "two.html"))
    assert out.returncode == 0, out.stderr
    return path, d / "two.html"


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyproperf", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=cwd, env=env)


def load(b: Browser, report: Path, fragment: str = "") -> None:
    b.open(report.as_uri() + fragment)
    b.wait_for("document.body.dataset.ready")
    assert b.eval("document.body.dataset.error || ''") == ""


def flame_names(b: Browser) -> list[str]:
    return b.eval("[...document.querySelectorAll('#flame .fn')].map(e => e.textContent)")


def table_rows(b: Browser) -> dict[str, tuple[float, float]]:
    rows = b.eval(
        "[...document.querySelectorAll('#top-table tbody tr')].map(r => "
        "[r.querySelector('.fn-link').textContent, +r.dataset.flat, +r.dataset.cum])"
    )
    return {name: (flat, cum) for name, flat, cum in rows}


def box_selector(b: Browser, name: str) -> str:
    box_id = b.eval(
        "[...document.querySelectorAll('#flame .fn')].find(e => e.textContent === "
        + json.dumps(name) + ")?.dataset.id ?? null"
    )
    assert box_id is not None, f"{name} is not in the flame graph"
    return f'#flame .fn[data-id="{box_id}"]'


# --- the tests -------------------------------------------------------------------------------


def test_profile_is_what_go_reads(two: tuple[Path, Path]) -> None:
    """Positive control for the comparisons below: Go sees the numbers the test put in."""
    path, _ = two
    total, rows = go_top(path)
    assert rows["app.parse"][1] // NS == expected()["app.parse"][1] == 55
    _, worker = go_top(path, "-tagfocus=thread=worker-1")
    assert set(worker) == {"worker.run", "worker.hash_all", "shared.compress"}
    assert total // NS == sum(c for _, _, c in STACKS)


def test_names_are_rendered_outside_script(two: tuple[Path, Path], tmp_path: Path) -> None:
    """Chromium's --dump-dom: the flame graph's boxes hold the function names as text."""
    _, report = two
    out = subprocess.run(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'ud'}",
         "--window-size=1200,800", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    outside = re.sub(r"<script\b.*?</script>", "", out, flags=re.S)
    assert 'data-ready="1"' in outside
    boxes = re.findall(r'<div class="fn[^"]*" data-id="\d+"[^>]*>([^<]*)</div>', outside)
    for name in expected():
        assert name in boxes, name
    total = re.search(r'id="total" data-value="(\d+)"', outside)
    assert total is not None and int(total.group(1)) == go_top(two[0])[0]


def test_click_zooms_and_breadcrumb_goes_back(browser: Browser, two: tuple[Path, Path]) -> None:
    _, report = two
    load(browser, report)
    before = flame_names(browser)
    assert "worker.hash_all" in before and "app.tokenize" in before
    browser.click(box_selector(browser, "app.parse"))
    browser.wait_for("document.getElementById('flame').dataset.zoom !== '0'")
    after = flame_names(browser)
    # app.parse, its callee and its callers (full width, above it); nothing else.
    assert "app.tokenize" in after and "app.main" in after
    for gone in ("worker.hash_all", "worker.run", "app.render", "shared.compress"):
        assert gone not in after, gone
    crumbs = browser.eval(
        "[...document.querySelectorAll('#crumbs .crumb')].map(e => e.textContent)"
    )
    assert crumbs == ["all", "app.main", "app.parse"]
    assert "app.parse" in browser.eval("document.getElementById('selected').textContent")
    # the zoomed box is the whole width
    widths = browser.eval(
        "(() => { const f = document.getElementById('flame');"
        " const z = f.querySelector('.fn[data-id=\"' + f.dataset.zoom + '\"]');"
        " return [z.getBoundingClientRect().width, f.getBoundingClientRect().width]; })()"
    )
    assert widths[0] >= widths[1] - 2
    browser.click('#crumbs .crumb[data-id="0"]')
    browser.wait_for("document.getElementById('flame').dataset.zoom === '0'")
    assert "worker.hash_all" in flame_names(browser)


def test_tooltip_shows_flat_and_cum(browser: Browser, two: tuple[Path, Path]) -> None:
    path, report = two
    load(browser, report)
    sel = box_selector(browser, "app.parse")
    browser.eval(
        "(() => { const r = document.querySelector(" + json.dumps(sel) + ")"
        ".getBoundingClientRect();"
        " window.__xy = [r.left + 5, r.top + 5]; })()"
    )
    x, y = browser.eval("window.__xy")
    browser.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x, y=y)
    text = browser.wait_for("!document.getElementById('tooltip').hidden && "
                            "document.getElementById('tooltip').textContent")
    _, rows = go_top(path)
    flat, cum = rows["app.parse"]
    assert "app.parse" in text and str(path.parent / "app.py") in text
    assert f"flat {_fmt_ms(flat)}" in text and f"cum {_fmt_ms(cum)}" in text


def _fmt_ms(ns: int) -> str:
    text = f"{ns / 1e6:.2f}".removesuffix(".00")
    return text + "ms"


@pytest.mark.parametrize("mode", ["focus", "hide"])
def test_label_filter_matches_go(browser: Browser, two: tuple[Path, Path], mode: str) -> None:
    """A click on thread=worker-1's focus (hide) button: the numbers of -tagfocus (-tagignore)."""
    path, report = two
    load(browser, report)
    browser.click(f'.label-value[data-key="thread"][data-value="worker-1"] button.{mode}')
    browser.wait_for(f"location.hash.includes('{mode}=thread%3Dworker-1')")
    go_total, go_rows = go_top(path, f"-tag{'focus' if mode == 'focus' else 'ignore'}="
                               "thread=worker-1")
    assert int(browser.eval("document.getElementById('total').dataset.value")) == go_total
    names = set(flame_names(browser))
    gone, kept = (MAIN_ONLY, WORKER_ONLY) if mode == "focus" else (WORKER_ONLY, MAIN_ONLY)
    assert not names & set(gone) and set(kept) <= names
    browser.click('#tabs button[data-tab="top"]')
    browser.wait_for("!document.getElementById('tab-top').hidden")
    rows = table_rows(browser)
    assert rows == {name: (float(f), float(c)) for name, (f, c) in go_rows.items()}
    truth = expected("worker-1") if mode == "focus" else expected(ignore="worker-1")
    assert {n: round(c / NS) for n, (_f, c) in rows.items()} == {n: v[1] for n, v in truth.items()}
    # clear: back to everything
    browser.click("button.clear")
    browser.wait_for("!location.hash.includes('thread%3D')")
    assert int(browser.eval("document.getElementById('total').dataset.value")) == go_top(path)[0]


def test_filter_from_the_url_fragment(browser: Browser, two: tuple[Path, Path]) -> None:
    path, report = two
    load(browser, report, "#tab=top&focus=thread%3DMainThread")
    go_total, go_rows = go_top(path, "-tagfocus=thread=MainThread")
    assert int(browser.eval("document.getElementById('total').dataset.value")) == go_total
    assert set(table_rows(browser)) == set(go_rows)


def test_search_highlights_and_shows_the_share(browser: Browser, two: tuple[Path, Path]) -> None:
    path, report = two
    load(browser, report)
    browser.type_text("#search", "compress|tokenize")
    browser.wait_for("document.getElementById('search-result').dataset.value")
    matched = int(browser.eval("document.getElementById('search-result').dataset.value"))
    # Go: the samples with a matching function on the stack
    text = pprof("-top", "-unit=ns", "-nodefraction=0", "-sample_index=cpu",
                 "-focus=compress|tokenize", path)
    shown = int(re.search(r"accounting for (\d+)ns", text).group(1))  # type: ignore[union-attr]
    assert matched == shown
    assert (40 + 6 + 12) * NS <= matched < (40 + 6 + 12 + 1) * NS
    highlighted = browser.eval(
        "[...new Set([...document.querySelectorAll('#flame .fn.match')].map(e => e.textContent))]"
    )
    assert sorted(highlighted) == ["app.tokenize", "shared.compress"]
    result = browser.eval("document.getElementById('search-result').textContent")
    assert "2 functions match" in result


def test_top_table_sorts(browser: Browser, two: tuple[Path, Path]) -> None:
    _, report = two
    load(browser, report, "#tab=top")
    by_flat = list(table_rows(browser).values())
    assert [f for f, _ in by_flat] == sorted((f for f, _ in by_flat), reverse=True)
    browser.click('#top-table th[data-sort="cum"]')
    browser.wait_for("location.hash.includes('sort=cum')")
    rows = table_rows(browser)
    assert next(iter(rows)) == "app.main"  # the largest cum of all
    assert [c for _, c in rows.values()] == sorted((c for _, c in rows.values()), reverse=True)
    browser.type_text("#top-filter", "^worker")
    browser.wait_for("document.querySelectorAll('#top-table tbody tr').length === 2")
    assert set(table_rows(browser)) == {"worker.run", "worker.hash_all"}


def test_split_by_thread(browser: Browser, two: tuple[Path, Path]) -> None:
    path, report = two
    load(browser, report)
    browser.click('#tabs button[data-tab="split"]')
    browser.wait_for("document.querySelectorAll('.split-group').length === 2")
    groups = browser.eval(
        "[...document.querySelectorAll('.split-group')].map(g => [g.dataset.value,"
        " [...g.querySelectorAll('.fn')].map(e => e.textContent)])"
    )
    by_value = dict(groups)
    assert set(by_value) == {"MainThread", "worker-1"}
    assert set(MAIN_ONLY) <= set(by_value["MainThread"])
    assert not set(WORKER_ONLY) & set(by_value["MainThread"])
    assert set(WORKER_ONLY) <= set(by_value["worker-1"])
    assert not set(MAIN_ONLY) & set(by_value["worker-1"])
    assert "shared.compress" in by_value["MainThread"] and "shared.compress" in by_value["worker-1"]
    totals = browser.eval(
        "[...document.querySelectorAll('.split-group')]"
        ".map(g => [g.dataset.value, +g.dataset.total])"
    )
    for value, total in totals:
        assert total == go_top(path, f"-tagfocus=thread={value}")[0], value


def test_source_lines_with_values(browser: Browser, two: tuple[Path, Path]) -> None:
    """A click on a name in the top table: its lines, from the file, with values per line."""
    path, report = two
    load(browser, report, "#tab=top")
    browser.eval(
        "document.querySelectorAll('#top-table .fn-link').forEach(e => {"
        " if (e.textContent === 'app.main') e.id = 'pick'; })"
    )
    browser.click("#pick")
    browser.wait_for("document.querySelector('.src-name')?.textContent === 'app.main'")
    assert browser.eval("document.querySelector('.src-file').textContent") == str(
        path.parent / "app.py")
    lines = browser.eval(
        "[...document.querySelectorAll('table.src tr[data-line]')].map(r =>"
        " [+r.dataset.line, r.className, r.querySelector('.code').textContent])"
    )
    texts = {n: t for n, _c, t in lines}
    assert texts[1] == "def main():                 # 1"
    assert texts[2].strip() == "parse()                 # 2"
    hot = {n for n, c, _t in lines if c == "hot"}
    assert hot == {2, 3}
    # per-line cum as go tool pprof -list shows it
    listing = pprof("-list=^app.main$", "-unit=ns", "-sample_index=cpu", path)
    for n in (2, 3):
        m = re.search(rf"^\s*\.\s+(\d+)ns\s+{n}:", listing, re.M)
        assert m is not None, listing
        cell = browser.eval(
            f"document.querySelector('table.src tr[data-line=\"{n}\"] td:nth-child(3)').textContent"
        )
        assert cell == _fmt_ms(int(m.group(1)))


def test_hostile_names_stay_text(browser: Browser, tmp_path: Path) -> None:
    """Names, files and labels that are HTML or end the script element are shown as text."""
    # ".<" keeps pprof's C++ clean-up away (it drops "<...>" from names without it)
    evil = [
        "m.</script><script>window.pwned = 1</script>",
        'm.<img src=x onerror="window.pwned = 2">',
        "m.<!--<script>window.pwned = 3</script>",
        "m.<svg onload=\"window.pwned = 4\">]]>\u2028\u2029{{JS}}",
    ]
    b = ProfileBuilder([("samples", "count")])
    frames = [Frame(name, f'/x/"><b onclick=1>{i}.py', 1, 2) for i, name in enumerate(evil)]
    b.add(frames, [5], labels=[("thread", "<script>window.pwned = 5</script>"),
                               ("</script>", "&amp;<i>")])
    b.add(frames[1:], [3], labels=[("thread", "plain")])
    path = tmp_path / "evil.pb.gz"
    path.write_bytes(b.to_gzip())
    assert "window.pwned" in pprof("-top", path)  # Go reads it, names and all
    report = tmp_path / "evil.html"
    assert cli("view", str(path), "-o", str(report)).returncode == 0
    page = report.read_text()
    assert page.count("</script>") == 2 and page.count("<script") == 2
    load(browser, report)
    assert browser.eval("typeof window.pwned") == "undefined"
    assert browser.eval("document.scripts.length") == 2
    assert browser.eval("document.querySelectorAll('img, svg, b, i').length") == 0
    names = flame_names(browser)
    for name in evil:
        assert name in names, name
    # the names Go shows (its table, read by lines, ends a name at U+2028)
    assert {n.split("\u2028")[0] for n in names[1:]} == set(go_top_names(path))
    labels = browser.eval(
        "[...document.querySelectorAll('.label-value')].map(e => [e.dataset.key, e.dataset.value])"
    )
    assert ["thread", "<script>window.pwned = 5</script>"] in labels
    assert ["</script>", "&amp;<i>"] in labels
    browser.click('.label-value[data-value="plain"] button.hide')
    browser.wait_for("location.hash.includes('hide=')")
    assert browser.eval("typeof window.pwned") == "undefined"
    assert browser.exceptions == [] or all("pwned" not in e for e in browser.exceptions)


def go_top_names(path: Path) -> list[str]:
    return [row.name for row in top(path, "-nodefraction=0")[1]]


def test_screenshot_is_not_blank(browser: Browser, two: tuple[Path, Path]) -> None:
    _, report = two
    browser.open("about:blank")
    blank = png_colours(browser.screenshot())
    assert blank[2] <= 2  # the control: an empty page is one colour
    load(browser, report)
    width, height, colours = png_colours(browser.screenshot())
    assert (width, height) == (1200, 800)
    assert colours > 50, colours


def test_go_program_profile(browser: Browser, tmp_path: Path, go_profile: Path) -> None:
    """A profile written by a real Go program (runtime/pprof, labels with pprof.Do)."""
    report = tmp_path / "go.html"
    out = cli("view", str(go_profile), "-o", str(report))
    assert out.returncode == 0, out.stderr
    load(browser, report, "#tab=top")
    total = _go_top_any(go_profile)
    assert int(browser.eval("document.getElementById('total').dataset.value")) == total
    assert "main.waitHere" in table_rows(browser)
    values = browser.eval(
        "[...document.querySelectorAll('.label-value[data-key=\"worker\"]')]"
        ".map(e => e.dataset.value)"
    )
    assert sorted(values) == ["a", "b"]
    browser.click('.label-value[data-key="worker"][data-value="a"] button.focus')
    browser.wait_for("location.hash.includes('focus=worker%3Da')")
    focused = _go_top_any(go_profile, "-tagfocus=worker=a")
    assert int(browser.eval("document.getElementById('total').dataset.value")) == focused
    assert focused == 3 and total >= 5  # three goroutines labelled a; b's, main's


def _go_top_any(path: Path, *args: str) -> int:
    """The total of the samples Go keeps (a count profile)."""
    text = pprof("-top", "-nodefraction=0", *args, path)
    return int(re.search(r"accounting for (\d+),", text).group(1))  # type: ignore[union-attr]


GO_PROGRAM = """
package main

import (
	"context"
	"os"
	"runtime/pprof"
	"sync"
)

func waitHere(wg *sync.WaitGroup, ch chan struct{}) { wg.Done(); <-ch }

func main() {
	ch := make(chan struct{})
	var wg sync.WaitGroup
	for i, name := range []string{"a", "a", "a", "b"} {
		_ = i
		wg.Add(1)
		pprof.Do(context.Background(), pprof.Labels("worker", name), func(context.Context) {
			go waitHere(&wg, ch)
		})
	}
	wg.Wait()
	f, _ := os.Create(os.Args[1])
	pprof.Lookup("goroutine").WriteTo(f, 0)
	f.Close()
	close(ch)
}
"""


@pytest.fixture(scope="module")
def go_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The goroutine profile of GO_PROGRAM, built and run with the Go the tests use."""
    d = tmp_path_factory.mktemp("goprog")
    (d / "main.go").write_text(GO_PROGRAM)
    (d / "go.mod").write_text("module goprog\n\ngo 1.21\n")
    go = os.environ.get("PYPROPERF_GO") or str(Path(sys.executable).with_name("go"))
    if not Path(go).exists():
        go = shutil.which("go") or go
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    if not env.get("HOME") and not env.get("GOCACHE"):
        env["GOCACHE"] = str(d / "gocache")
    subprocess.run([go, "run", ".", str(d / "goroutine.pb.gz")], cwd=d, env=env, check=True,
                   capture_output=True, timeout=600)
    return d / "goroutine.pb.gz"


# --- big profiles ------------------------------------------------------------------------------


def big_profile(path: Path, stacks: int = 100_000, seed: int = 3) -> None:
    """``stacks`` distinct stacks, 8 to 30 frames, over 3,000 functions in 60 modules, 8 threads."""
    rng = random.Random(seed)
    funcs = [Frame(f"mod{i % 60}.func{i}", f"/src/mod{i % 60}.py", 10 * i, 10 * i + 1)
             for i in range(3000)]
    b = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")])
    seen: set[tuple[int, ...]] = set()
    roots = [rng.randrange(3000) for _ in range(20)]
    while len(seen) < stacks:
        depth = rng.randint(8, 30)
        # a skewed walk: shared prefixes near the root, as real programs have
        ids = [rng.choice(roots)]
        for _ in range(depth - 1):
            ids.append(int(rng.paretovariate(0.7) * 7 + ids[-1] * 3) % 3000)
        key = tuple(ids)
        if key in seen:
            continue
        seen.add(key)
        n = max(1, int(rng.paretovariate(1.2)))
        b.add([funcs[i] for i in reversed(ids)], [n, n * NS],
              labels=[("thread", f"t{rng.randrange(8)}")])
    path.write_bytes(b.to_gzip())


@pytest.mark.slow
def test_big_profile_renders_in_seconds(browser: Browser, tmp_path: Path) -> None:
    """100,000 distinct stacks: the report is < 10 MB and Chromium draws it in a few seconds."""
    path = tmp_path / "big.pb.gz"
    big_profile(path)
    report = tmp_path / "big.html"
    started = time.monotonic()
    out = cli("view", str(path), "-o", str(report))
    written = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    size = report.stat().st_size
    started = time.monotonic()
    load(browser, report)
    shown = time.monotonic() - started
    total = int(browser.eval("document.getElementById('total').dataset.value"))
    go_total = int(re.search(r"of (\d+)ns total", pprof(  # type: ignore[union-attr]
        "-top", "-unit=ns", "-nodecount=1", "-sample_index=cpu", path)).group(1))
    assert total == go_total  # nothing lost, also where the tree was cut
    cut = browser.eval("document.querySelector('.cut-note')?.textContent ?? ''")
    boxes = int(browser.eval("document.getElementById('flame').dataset.boxes"))
    # a label filter on the big profile
    started = time.monotonic()
    browser.click('.label-value[data-key="thread"][data-value="t3"] button.focus')
    browser.wait_for("location.hash.includes('focus=thread%3Dt3')")
    filtered = time.monotonic() - started
    focused = int(browser.eval("document.getElementById('total').dataset.value"))
    go_focused = go_top(path, "-tagfocus=thread=t3")[0]
    assert focused == go_focused
    print(f"\nbig profile: {path.stat().st_size} B profile, report {size} B, written in "
          f"{written:.1f} s, shown in {shown:.1f} s, {boxes} boxes, filter {filtered:.1f} s; "
          f"{cut}")
    assert size < 10_000_000
    assert shown < 20 and filtered < 10  # generous for a loaded CI machine
    assert boxes > 100


def test_small_profiles_are_not_cut(two: tuple[Path, Path]) -> None:
    page = two[1].read_text()
    assert '"cut":null' in page


def test_cut_keeps_totals_per_label(tmp_path: Path) -> None:
    """The cut merges small subtrees into (cut) boxes: every label's total stays exact."""
    path = tmp_path / "mid.pb.gz"
    big_profile(path, stacks=3000, seed=5)
    from pyproperf import _top
    from pyproperf._view import _model

    profile = _top.load(str(path))
    whole = _model.build(profile, title="x")
    cut = _model.build(profile, title="x", max_nodes=500)
    assert whole.cut is None and cut.cut is not None
    assert cut.cut["kept"] <= 500 + cut.cut["nodes"]
    assert len(cut.node_frames) < len(whole.node_frames) // 4

    def per_label(m: _model.Model) -> dict[str, int]:
        out: dict[str, int] = {}
        for ls, v in zip(m.sample_labels, m.sample_values[1], strict=True):
            key = m.strings[m.label_sets[ls][1]]
            out[key] = out.get(key, 0) + v
        return out

    assert per_label(cut) == per_label(whole)
    assert m_total(cut) == m_total(whole) == int(re.search(  # type: ignore[union-attr]
        r"of (\d+)ns total", pprof("-top", "-unit=ns", "-nodecount=1", "-sample_index=cpu",
                                    path)).group(1))
    assert _model.CUT_NAME in cut.strings and _model.CUT_NAME not in whole.strings


def m_total(m: _view._model.Model) -> int:
    return sum(m.sample_values[1])


# --- the command line ----------------------------------------------------------------------------


def test_default_output_name_and_message(two: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = two
    out = cli("view", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "two.html").exists()
    assert out.stderr.startswith("wrote ") and "two.html" in out.stderr
    assert _view.html_path_for("a/cpu.pb.gz") == "a/cpu.html"
    assert _view.html_path_for("heap.pprof") == "heap.html"
    assert _view.html_path_for("prof") == "prof.html"


def test_bad_input_is_one_line_and_status_2(two: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = two
    junk = tmp_path / "junk.pb.gz"
    junk.write_text("not a profile\n")
    cases = [
        (["view", str(junk), "-o", str(tmp_path / "j.html")], "unrecognized profile format"),
        (["view", str(tmp_path / "missing.pb.gz")], "No such file"),
        (["view", str(path), "-o", str(tmp_path / "no" / "x.html")], "does not exist"),
        (["view", str(path), "-o", str(path)], "would replace the profile"),
    ]
    for args, message in cases:
        out = cli(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "j.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pb.gz"]


def test_open_uses_the_web_browser(two: tuple[Path, Path], tmp_path: Path) -> None:
    """--open goes through Python's webbrowser module ($BROWSER: a script that notes its URL)."""
    path, _ = two
    seen = tmp_path / "seen.txt"
    opener = tmp_path / "opener.sh"
    opener.write_text(f'#!/bin/sh\nprintf %s "$1" > {seen}\n')
    opener.chmod(0o755)
    env = {**os.environ, "BROWSER": str(opener)}
    out = cli("view", str(path), "-o", str(tmp_path / "r.html"), "--open", env=env)
    assert out.returncode == 0, out.stderr
    assert seen.read_text() == (tmp_path / "r.html").as_uri()


def test_no_source_leaves_sources_out(two: tuple[Path, Path], tmp_path: Path) -> None:
    path, report = two
    assert "parse()                 # 2" in report.read_text()  # positive control
    out = cli("view", str(path), "-o", str(tmp_path / "n.html"), "--no-source")
    assert out.returncode == 0
    assert "parse()                 # 2" not in (tmp_path / "n.html").read_text()


def test_only_source_files_are_embedded(tmp_path: Path) -> None:
    """A profile naming /etc/passwd (or any non-source file) gets no lines of it."""
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n" * 5)
    code = tmp_path / "code.py"
    code.write_text("x = 1\ny = 2\nz = 3\n")
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)  # no writer: opening it for reading the usual way would block
    b = ProfileBuilder([("samples", "count")])
    b.add([Frame("a.f", str(secret), 1, 2)], [1])
    b.add([Frame("a.g", str(code), 1, 2)], [1])
    b.add([Frame("a.h", str(fifo), 1, 2)], [1])
    b.add([Frame("a.i", "code.py", 1, 2)], [1])  # relative: not looked up
    profile = pb.Profile.FromString(b.to_bytes())
    page = _view.render(profile, title="t").decode()
    assert "hunter2" not in page and "y = 2" in page
    data = re.search(r'id="profile-data">(.*?)</script>', page)
    assert data is not None
    sources = json.loads(data.group(1))["sources"]
    assert [lines for _first, lines in sources.values()] == [["x = 1", "y = 2", "z = 3"]]


def test_run_html_writes_the_report(tmp_path: Path) -> None:
    script = tmp_path / "busy.py"
    script.write_text(textwrap.dedent(
        """\
        import time

        def spin_here():
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass

        spin_here()
        """
    ))
    out = cli("run", "--html", "-o", str(tmp_path / "busy.pb.gz"), str(script), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = tmp_path / "busy.html"
    assert report.exists(), out.stderr
    assert "wrote " in out.stderr and "busy.html" in out.stderr
    assert "spin_here" in pprof("-top", tmp_path / "busy.pb.gz")
    page = report.read_text()
    assert "__main__.spin_here" in page
    assert "end = time.process_time() + 0.3" in page  # its source, embedded


def test_max_nodes_cuts_and_the_page_says_so(
    browser: Browser, two: tuple[Path, Path], tmp_path: Path
) -> None:
    path, _ = two
    report = tmp_path / "cut.html"
    assert cli("view", str(path), "-o", str(report), "--max-nodes", "4").returncode == 0
    load(browser, report)
    note = browser.eval("document.querySelector('.cut-note').textContent")
    assert "call tree has 11 nodes, of which 7 are kept" in note  # 4 kept, 3 (cut) boxes
    assert "(cut: small stacks)" in flame_names(browser)
    assert int(browser.eval("document.getElementById('total').dataset.value")) == go_top(path)[0]
    browser.click('.label-value[data-key="thread"][data-value="worker-1"] button.focus')
    browser.wait_for("location.hash.includes('focus=thread%3Dworker-1')")
    assert int(browser.eval("document.getElementById('total').dataset.value")) == go_top(
        path, "-tagfocus=thread=worker-1")[0]


def test_the_page_needs_no_network(two: tuple[Path, Path]) -> None:
    """No URL in the page's own parts, and a policy that lets it fetch nothing."""
    page = two[1].read_text()
    own = page[: page.index('<script type="application/json"')] + page[page.rindex("<script>"):]
    assert not re.search(r"https?:|//[a-z]", own.replace("file://", ""))
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert csp is not None and csp.group(1).startswith("default-src &#x27;none&#x27;; ")
    assert "unsafe-inline" not in csp.group(1)

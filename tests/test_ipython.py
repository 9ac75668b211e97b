"""``%load_ext pyproperf``, ``%%pprof`` and ``%pprof`` in a real IPython shell.

Each test runs a fresh interpreter that drives IPython's own
``InteractiveShell`` cell by cell, as the terminal and the Jupyter kernel
do (``run_cell``), and prints what every cell printed between markers.
The cells measure their own CPU (``time.thread_time()``); the profiles
they write are read back with ``go tool pprof``.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pyproperf import _builder
from tests.pprof_tool import check_valid, load, pprof, top_by_name

DRIVER = """
import json, sys
from traitlets.config import Config
from IPython.core.interactiveshell import InteractiveShell

config = Config()
config.HistoryManager.hist_file = ":memory:"
shell = InteractiveShell.instance(config=config)
for i, cell in enumerate(json.load(open(sys.argv[1]))):
    print(f"<<<cell {i}>>>", flush=True)
    shell.run_cell(cell, store_history=True)
print("<<<end>>>", flush=True)
"""

SETUP = """
import time

def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

def heavy():
    t0 = time.thread_time()
    spin(0.3)
    return time.thread_time() - t0

def light():
    t0 = time.thread_time()
    spin(0.1)
    return time.thread_time() - t0

ran = 0
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ipython(tmp_path: Path, *cells: str) -> list[str]:
    """Run ``%load_ext pyproperf``, SETUP, then ``cells``; what each of ``cells`` printed."""
    script = tmp_path / "cells.json"
    script.write_text(json.dumps(["%load_ext pyproperf", SETUP, *cells]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "IPYTHONDIR": str(tmp_path / ".ipython")}
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(script)], cwd=tmp_path, env=env, timeout=120,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
    )
    text = _ANSI.sub("", out.stdout)
    assert out.returncode == 0 and "<<<end>>>" in text, text
    parts = re.split(r"<<<cell \d+>>>\n", text.split("<<<end>>>")[0])[1:]
    assert parts[0] == "" and parts[1] == "", parts[:2]  # the extension loads silently
    return parts[2:]


def values(output: str) -> dict[str, float]:
    """``name = number`` lines a cell printed."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+) = ([\d.e-]+)$", output, re.M)}


def near(measured: float, expected: float) -> bool:
    return abs(measured - expected) <= 0.03 + 0.2 * expected


def test_cell_and_line_magics_profile_the_code_and_show_a_top_table(tmp_path: Path) -> None:
    cell, after, line, default, wall = ipython(
        tmp_path,
        "%%pprof -o cell.pb.gz\n"
        "used_heavy = heavy()\nused_light = light()\nanswer = 41\nanswer + 1",
        "print('used_heavy =', used_heavy); print('used_light =', used_light)\nanswer",
        "got = %pprof -o line.pb.gz heavy()\nprint('got =', got)",
        "%%pprof\nlight()",
        "%%pprof --clock wall --hz 250\nt0 = time.perf_counter(); time.sleep(0.3)\n"
        "print('slept =', time.perf_counter() - t0)",
    )
    measured = values(after)
    # The cell ran in the user's namespace, and its last value is its Out.
    assert "Out[3]: 42" in cell, cell
    assert "Out[4]: 41" in after, after
    assert cell.startswith("pyproperf: wrote cell.pb.gz (")
    # The table under the cell is go tool pprof's -top (same totals), with the cell's functions.
    profile = tmp_path / "cell.pb.gz"
    check_valid(load(profile))
    assert ".heavy\n" in cell and ".light\n" in cell and ".spin\n" in cell, cell
    total = re.search(r"Showing nodes accounting for \S+, [\d.]+% of (\S+) total", cell)
    assert total and f"of {total[1]} total" in pprof("-top", profile)
    rows = top_by_name(profile)
    heavy = next(r for name, r in rows.items() if name.endswith(".heavy"))
    light = next(r for name, r in rows.items() if name.endswith(".light"))
    assert near(heavy.cum, measured["used_heavy"]), (heavy, measured)
    assert near(light.cum, measured["used_light"]), (light, measured)
    # Stacks start at the cell: IPython's frames and the magic's are cut off.
    assert not [name for name in rows if "IPython" in name or "pyproperf" in name], rows
    assert any(name.endswith(".<module>") for name in rows)

    # The line magic returns the statement's value.
    got = values(line)["got"]
    line_rows = top_by_name(tmp_path / "line.pb.gz")
    assert near(next(r.cum for n, r in line_rows.items() if n.endswith(".heavy")), got)
    assert line.startswith("pyproperf: wrote line.pb.gz (")

    # Without -o: cpu.pb.gz here; with --clock wall: wall.pb.gz, at the asked rate.
    assert default.startswith("pyproperf: wrote cpu.pb.gz (")
    assert any(n.endswith(".light") for n in top_by_name(tmp_path / "cpu.pb.gz"))
    assert "pyproperf: wrote wall.pb.gz (" in wall
    raw = pprof("-raw", tmp_path / "wall.pb.gz")
    assert "PeriodType: wall nanoseconds\nPeriod: 4000000\n" in raw
    # (time.sleep is C: its wait is on the cell's own line.)
    waited = next(r for n, r in top_by_name(tmp_path / "wall.pb.gz").items()
                  if n.endswith(".<module>"))
    assert near(waited.flat, values(wall)["slept"]), (waited, wall)


def test_heap_errors_and_bad_options(tmp_path: Path) -> None:
    heap, failed, alive, *usage = ipython(
        tmp_path,
        "%%pprof --heap\nimport sys\n"
        "def alloc():\n    return [str(i) * 3 for i in range(100_000)]\n"
        "kept = alloc()\nprint('held =', sum(map(sys.getsizeof, kept)) + sys.getsizeof(kept))",
        "%%pprof -o err.pb.gz\nheavy()\nraise ValueError('boom')",
        "print('ran =', ran)",
        "%pprof --hz 0 ran += 1",
        "%pprof --hz=lots ran += 1",
        "%%pprof --clock sundial\nran += 1",
        "%%pprof --heap --hz 50\nran += 1",
        "%pprof --bogus ran += 1",
        "%%pprof -o no/such/dir/x.pb.gz\nran += 1",
        "%pprof -o x.pb.gz",
        "%%pprof ran += 1\nran += 1",
        "print('ran =', ran)",
        "%pprof -o ok.pb.gz ran += 1",
        "print('ran =', ran)",
    )
    # --heap: the allocs profile of what the cell allocated and still holds.
    assert "\npyproperf: wrote heap.pb.gz (allocs, " in heap
    path = tmp_path / "heap.pb.gz"
    check_valid(load(path))
    rows = top_by_name(path, "-sample_index=inuse_space")
    alloc = next(r for name, r in rows.items() if name.endswith(".alloc"))
    held = values(heap)["held"]
    assert 0.8 * held <= alloc.cum <= 1.3 * held, (alloc, held)

    # A cell that raises: the profile is written, the error shown, the shell goes on.
    assert failed.startswith("pyproperf: wrote err.pb.gz (")
    assert "ValueError: boom" in failed
    assert "_ipython.py" not in failed  # the magic's own frames are hidden
    assert any(n.endswith(".heavy") for n in top_by_name(tmp_path / "err.pb.gz"))
    assert values(alive) == {"ran": 0}

    # Bad usage: one line, nothing run, nothing written.
    expected = [
        "UsageError: %pprof: --hz must be between 1 and 10000, not 0",
        "UsageError: %pprof: --hz must be a whole number, not 'lots'",
        "UsageError: %pprof: --clock must be cpu or wall, not 'sundial'",
        "UsageError: %pprof: --heap profiles memory, not CPU: it takes no --clock or --hz",
        "UsageError: %pprof: unknown option '--bogus'; usage: "
        "%%pprof [-o FILE] [--clock cpu|wall] [--hz N] [--heap]",
        "UsageError: %pprof: cannot write no/such/dir/x.pb.gz: -o: directory does not exist",
        "UsageError: %pprof needs a statement; usage: ",
        "UsageError: %%pprof takes no statement on its line; usage: ",
    ]
    for output, message in zip(usage, expected, strict=False):
        assert output.strip().startswith(message), (output, message)
        assert len(output.strip().splitlines()) == 1, output
    assert values(usage[len(expected)]) == {"ran": 0}
    assert not (tmp_path / "x.pb.gz").exists() and not (tmp_path / "no").exists()
    # Positive control: the same statement with good options runs, profiled.
    assert usage[len(expected) + 1].startswith("pyproperf: wrote ok.pb.gz (")
    assert values(usage[len(expected) + 2]) == {"ran": 1}
    check_valid(load(tmp_path / "ok.pb.gz"))


def test_import_pyproperf_imports_no_ipython_until_the_extension_loads() -> None:
    code = (
        "import sys, pyproperf\n"
        "print('IPython' in sys.modules, 'pyproperf._ipython' in sys.modules)\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "from traitlets.config import Config\n"
        "c = Config(); c.HistoryManager.hist_file = ':memory:'\n"
        "shell = InteractiveShell.instance(config=c)\n"
        "shell.run_line_magic('load_ext', 'pyproperf')\n"
        "print('pyproperf._ipython' in sys.modules, 'pprof' in shell.magics_manager.magics['cell'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False", "True", "True"], out


KERNEL_DRIVER = """
import json, sys
from jupyter_client.manager import start_new_kernel

km, kc = start_new_kernel(kernel_name="python3", cwd=sys.argv[2], startup_timeout=60)
try:
    results = []
    for cell in json.load(open(sys.argv[1])):
        outputs = []

        def hook(msg, outputs=outputs):
            if msg["msg_type"] in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"type": msg["msg_type"], "content": msg["content"]})

        reply = kc.execute_interactive(cell, output_hook=hook, timeout=60)
        results.append({"status": reply["content"]["status"], "outputs": outputs})
    print(json.dumps(results))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


def test_in_a_jupyter_kernel_the_cell_shows_the_table_and_the_view_report(
    tmp_path: Path,
) -> None:
    """A real ipykernel, driven by jupyter_client as a notebook front end drives it."""
    from pyproperf import _view

    (tmp_path / "cells.json").write_text(json.dumps([
        "%load_ext pyproperf",
        SETUP,
        "%%pprof -o cell.pb.gz\nused = heavy()\n6 * 7",
        "print('used =', used)",
    ]))
    env = {
        **os.environ, "IPYTHONDIR": str(tmp_path / ".ipython"), "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
    }
    out = subprocess.run(
        [sys.executable, "-c", KERNEL_DRIVER, str(tmp_path / "cells.json"), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert out.returncode == 0, out.stderr
    cells = json.loads(out.stdout)
    assert [c["status"] for c in cells] == ["ok"] * 4, cells
    outputs = cells[2]["outputs"]
    # stdout: the line and the table; no warning on stderr.
    streams = {o["content"]["name"]: o["content"]["text"] for o in outputs if o["type"] == "stream"}
    assert list(streams) == ["stdout"], streams
    assert streams["stdout"].startswith("pyproperf: wrote cell.pb.gz ("), streams
    assert ".heavy\n" in streams["stdout"]
    # The cell's value is its Out.
    result = next(o["content"] for o in outputs if o["type"] == "execute_result")
    assert result["data"]["text/plain"] == "42"
    # The report: pyproperf view's page of the very file written, whole, in an iframe.
    shown = [o["content"]["data"] for o in outputs if o["type"] == "display_data"]
    assert len(shown) == 1, outputs
    m = re.fullmatch(
        r'<div><iframe srcdoc="([^"]*)" title="cell.pb.gz" style="[^"]*"></iframe></div>',
        shown[0]["text/html"],
    )
    assert m, shown[0]["text/html"][:300]
    data = (tmp_path / "cell.pb.gz").read_bytes()
    page = html.unescape(m[1])
    assert page == _view.render(_builder.decode(data), title="cell.pb.gz").decode("utf-8")
    # The file itself: go tool pprof reads what the cell measured.
    check_valid(load(tmp_path / "cell.pb.gz"))
    heavy = next(r for n, r in top_by_name(tmp_path / "cell.pb.gz").items()
                 if n.endswith(".heavy"))
    used = float(cells[3]["outputs"][0]["content"]["text"].split("=")[1])
    assert near(heavy.cum, used), (heavy, used)

"""Package shape: one-way imports, a light ``import pyproperf``, the public surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyproperf

PACKAGE = Path(pyproperf.__file__).parent

# design.md's flow, as layers: a module may import only from its own layer or
# lower ones.  A new module must be placed here, which is the point.
LAYERS: dict[int, set[str]] = {
    0: {"_pb", "_pb.profile_pb2"},  # generated schema code
    1: {"_builder", "_io", "_read", "_text", "_hooks", "_own"},  # model, encoding, reading; hooks
    # what is active where
    2: {"_labels", "_labels._state", "_labels._region", "_labels._inherit", "_labels._tasks"},
    3: {"_stacks"},  # frames -> stack keys
    4: {"_sampler", "_sigprof", "_helper", "_estimate", "_cpu", "_goroutine", "_heap",
        "_contention"},  # sources
    5: {"_registry", "_top", "_merge", "_dump", "_filter", "_reports", "_convert",
        "_view", "_view._model", "_view._source"},  # the HTML report: _view
    # (5: profiles as objects, reports, merging, pprof's filters, conversions)
    # outputs and the public API; the http package's private modules (http._core...) too
    6: {"http", "__main__", "__init__", "_cli_run", "_subprocesses", "_command",
        "_boot.sitecustomize", "_pytest_options", "_pytest_plugin", "_ipython"},
}


def layer_of(module: str) -> int:
    for layer, names in LAYERS.items():
        if module in names:
            return layer
    if module.startswith("http."):
        return 6
    if module.startswith(("_contention", "_heap", "_goroutine")):
        return 4
    raise AssertionError(f"pyproperf.{module} is in no layer of tests/test_package.py")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # The package a relative import starts from: pyproperf, or pyproperf.http for its modules.
    package = ["pyproperf", *path.parent.relative_to(PACKAGE).parts]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            elif node.module:
                module = node.module
            else:
                continue
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__") if name != "__init__" else name] = path
    return out


def test_imports_point_one_way() -> None:
    mods = modules()
    for name, path in mods.items():
        mine = layer_of(name)
        for imported in imports_of(path):
            if not imported.startswith("pyproperf."):
                continue
            target = imported.removeprefix("pyproperf.")
            if target not in mods:
                continue  # "from pyproperf import _x" names a module, checked via ImportFrom
            assert layer_of(target) <= mine, (
                f"pyproperf.{name} (layer {mine}) imports pyproperf.{target} "
                f"(layer {layer_of(target)}): the arrow points backwards"
            )


def test_modules_are_found_in_subpackages() -> None:
    mods = modules()
    for name in ("__init__", "_pb", "http", "http._core", "http._server", "http._asgi",
                 "http._wait", "http._signals"):
        assert name in mods, name
    for name in mods:
        layer_of(name)  # every module, in subpackages too, is placed


def test_http_modules_need_only_their_siblings() -> None:
    """pyproperf.http's private modules take modules, not names, from the package: importing
    one first runs ``http/__init__``, which imports them back, so a name would be a cycle."""
    mods = modules()
    for name, path in mods.items():
        if not name.startswith("http."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "pyproperf.http":
                for alias in node.names:
                    assert f"http.{alias.name}" in mods, (
                        f"pyproperf.{name} imports {alias.name} from pyproperf.http"
                    )


def test_protobuf_only_in_the_builder() -> None:
    for name, path in modules().items():
        if name in ("_builder", "_pb", "_pb.profile_pb2"):
            continue
        assert not any(i.startswith("google.protobuf") for i in imports_of(path)), name


def test_import_is_light() -> None:
    code = (
        "import sys, pyproperf; "
        "heavy = [m for m in ('asyncio', 'greenlet', 'gevent', 'http.server', "
        "'google.protobuf', 'tracemalloc_extras') if m in sys.modules]; "
        "heavy += [m for m in sys.modules if m.startswith('pyproperf.http')]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = eval(out.stdout)
    assert "asyncio" not in heavy and "greenlet" not in heavy and "http.server" not in heavy
    assert "gevent" not in heavy
    assert not [m for m in heavy if m.startswith("pyproperf.http")], heavy


def test_public_api_matches_go() -> None:
    go_api = {
        "start_cpu_profile", "stop_cpu_profile", "write_heap_profile", "lookup", "new_profile",
        "profiles", "Profile", "labels", "label", "with_labels", "do", "for_labels",
        "set_goroutine_labels", "LabelSet",
    }
    assert go_api <= set(pyproperf.__all__), go_api - set(pyproperf.__all__)
    for name in pyproperf.__all__:
        obj = getattr(pyproperf, name)
        assert obj.__doc__, f"pyproperf.{name} has no docstring"
    assert (PACKAGE / "py.typed").exists()


def test_interpreter_changes_live_in_hooks() -> None:
    """Fork and exit handlers, import finders and Thread wrappers: only ``_hooks`` makes them."""
    patterns = ("os.register_at_fork", "atexit.register", "sys.meta_path.insert",
                "sys.meta_path.append", "Thread.start =", "._bootstrap_inner =",
                "cls.start =", "cls._bootstrap_inner =")
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_hooks.py" or "_pb" in path.parts:
            continue
        text = path.read_text()
        for pattern in patterns:
            assert pattern not in text, f"{path.name} does {pattern!r}: register in _hooks"
    # Positive control: _hooks itself does each of them.
    hooks = (PACKAGE / "_hooks.py").read_text()
    for pattern in ("os.register_at_fork", "atexit.register", "sys.meta_path.insert",
                    "cls.start =", "cls._bootstrap_inner ="):
        assert pattern in hooks


def test_label_inheritance_wraps_through_hooks_and_lists_what_it_wrapped() -> None:
    """Every method label inheritance wraps goes through ``_hooks.wrap_attribute`` (listed once)."""
    assigned = (".create_task =", ".submit =", ".spawn_impl =", ".task_exited =",
                ".start_thread_soon =", ".run_sync_in_worker_thread =", ".run_sync =")
    for path in (PACKAGE / "_labels").glob("*.py"):
        text = path.read_text()
        assert "wrap_attribute" in text or path.name in ("_state.py", "_region.py", "__init__.py")
        for pattern in assigned:
            assert pattern not in text, (path.name, pattern)
    code = """
import asyncio, concurrent.futures.process, anyio, trio, uvloop, trio._core._thread_cache
import anyio._backends._asyncio
import pyproperf
from pyproperf import _hooks
assert _hooks.wrapped == [], _hooks.wrapped   # nothing before the first label set
pyproperf.labels("k", "v")
pyproperf.labels("k", "w")                    # installed once
print("\\n".join(_hooks.wrapped))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert sorted(out) == sorted([
        "asyncio.base_events.BaseEventLoop.create_task",
        "uvloop.Loop.create_task",
        "trio._core._run.Runner.spawn_impl",
        "trio._core._run.Runner.task_exited",
        "trio._core._thread_cache.ThreadCache.start_thread_soon",
        "anyio._backends._asyncio.AsyncIOBackend.run_sync_in_worker_thread",
        "concurrent.futures.thread.ThreadPoolExecutor.submit",
        "concurrent.futures.process.ProcessPoolExecutor.submit",
    ]), out


def test_one_wrapper_per_thread_method_whatever_is_used() -> None:
    """Labels, threadcreate and the CPU sampler share one Thread.start and one bootstrap wrapper."""
    code = """
import io, threading, pyproperf
pyproperf.start_cpu_profile(io.BytesIO())
with pyproperf.labeled(pyproperf.labels("k", "v")):
    t = threading.Thread(target=lambda: None); t.start(); t.join()
pyproperf.stop_cpu_profile()
for name in ("start", "_bootstrap_inner"):
    fn, mods = getattr(threading.Thread, name), []
    while fn is not None:
        mods.append(fn.__module__)
        fn = getattr(fn, "__wrapped__", None)
    print(name, mods)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["start ['pyproperf._hooks', 'threading']",
                   "_bootstrap_inner ['pyproperf._hooks', 'threading']"], out

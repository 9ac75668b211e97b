"""Every change pyproperf makes to the interpreter, in one place.

Other modules never patch the interpreter themselves; they register here:

* ``on_thread_start`` / ``on_thread_run``: one wrapper of
  ``threading.Thread.start`` and one of ``Thread._bootstrap_inner`` (the
  thread's own first frame), each calling the registered hooks in order.
  Used by threadcreate (who started a thread), label inheritance (a thread
  starts with its creator's labels) and the CPU sampler (a thread's last
  CPU is charged as it exits).
* ``after_import``: one ``sys.meta_path`` finder that runs a hook right
  after a module is imported, for modules pyproperf must patch but never
  imports itself (asyncio, gevent, concurrent.futures).  It leaves
  ``sys.meta_path`` when nothing is watched.
* ``wrap_attribute``: replaces a method or function of a third-party class
  or module by a wrapper that calls the original (label inheritance into
  executors, event-loop tasks, worker threads); each one is listed in
  ``wrapped`` and marked, so it is wrapped once however often it is asked.
* ``at_fork_child`` / ``at_exit``: one ``os.register_at_fork`` handler and
  one ``atexit`` handler, calling the registered functions (at exit, the
  last registered first, as ``atexit`` does).
* ``at_hard_exit`` / ``at_sigterm`` (``run --subprocesses`` only): a
  wrapper of ``os._exit`` (how multiprocessing's forked children end,
  skipping ``atexit``) that runs the registered functions first, and a
  SIGTERM handler, installed only where SIGTERM has its default action
  (``Pool.terminate`` ends idle workers so), that runs them and then dies
  by SIGTERM as the process would have.
* ``real_thread``: the OS-thread primitives, also under gevent's monkey
  patching (which makes ``threading`` hand out greenlets).
* ``lower_switch_interval`` / ``restore_switch_interval``: the CPU
  sampler's shorter GIL switch interval while it must see threads' short
  bursts (see ``_helper``), and the program's own put back; a program
  that sets its own meanwhile keeps it.  A forked child gets the
  program's back.

Wrappers stay once installed: unwrapping could not undo a wrapper someone
else put on top.  A hook that fails costs its own feature, never the
host's thread, import, fork or exit.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from pyproperf import _own

__all__ = [
    "after_import",
    "at_exit",
    "at_fork_child",
    "at_hard_exit",
    "at_sigterm",
    "cancel_import_hook",
    "exit_work",
    "lower_switch_interval",
    "on_thread_run",
    "on_thread_start",
    "real_get_ident",
    "real_thread",
    "restore_switch_interval",
    "switch_interval_lowered",
    "wrap_attribute",
    "wrapped",
]

# -- the real OS-thread primitives --------------------------------------------------------


def _originals() -> ModuleType:
    """``_thread``'s primitives as they are before any monkey patching."""
    import _thread

    module = ModuleType("_thread_original")
    monkey: Any = sys.modules.get("gevent.monkey")
    patched = monkey is not None and monkey.is_module_patched("_thread")
    for name in ("start_new_thread", "allocate_lock", "get_ident", "RLock"):
        value = monkey.get_original("_thread", name) if patched else getattr(_thread, name)
        setattr(module, name, value)
    return module


# Captured when pyproperf is imported: gevent patches ``_thread`` itself, so a
# later lookup of ``_thread.get_ident`` would give greenlet ids.
_ORIGINAL_THREAD = _originals()


def real_thread() -> ModuleType:
    """``_thread``'s primitives, the originals also under gevent's monkey patching.

    pyproperf's own threads must be real threads and its locks real locks:
    a patched ``threading`` gives greenlets that never run while the
    program computes.
    """
    return _ORIGINAL_THREAD


# The OS thread's ident (what ``sys._current_frames`` uses), also under gevent's
# monkey patching, which makes ``threading.get_ident`` return greenlet ids.
real_get_ident: Callable[[], int] = _ORIGINAL_THREAD.get_ident


# -- threading.Thread ------------------------------------------------------------------------

# Called as hook(thread) just before the thread starts.
_before_start: list[Callable[[threading.Thread], None]] = []
# Called as hook(thread, caller's frame) right after it started.
_after_start: list[Callable[[threading.Thread, FrameType | None], None]] = []
# (enter, leave): enter(thread, frame) -> token in the new thread before its
# run(); leave(thread, frame, token) after it, even if it raised.
_RunHook = tuple[
    Callable[[threading.Thread, FrameType], Any],
    Callable[[threading.Thread, FrameType, Any], None],
]
_run_hooks: list[_RunHook] = []
_thread_lock = threading.Lock()
_threads_wrapped = False
# The code of the bootstrap wrapper: the root frame of every thread started after it.
bootstrap_code: Any = None


def on_thread_start(
    before: Callable[[threading.Thread], None] | None = None,
    after: Callable[[threading.Thread, FrameType | None], None] | None = None,
) -> None:
    """Run ``before(thread)`` before each ``Thread.start`` and ``after(thread, caller)`` after."""
    with _thread_lock:
        if before is not None:
            _before_start.append(before)
        if after is not None:
            _after_start.append(after)
        _wrap_threads()


def on_thread_run(
    enter: Callable[[threading.Thread, FrameType], Any],
    leave: Callable[[threading.Thread, FrameType, Any], None],
) -> None:
    """Run ``enter`` in each new thread before its ``run()``, ``leave`` after it."""
    with _thread_lock:
        _run_hooks.append((enter, leave))
        _wrap_threads()


def _wrap_threads() -> None:
    global _threads_wrapped, bootstrap_code  # noqa: PLW0603 - a one-shot install, published
    if _threads_wrapped:
        return
    _threads_wrapped = True
    cls = threading.Thread
    original_start = cls.start
    original_run = cls._bootstrap_inner  # type: ignore[attr-defined]

    def start(self: threading.Thread) -> None:
        for before in _before_start:
            before(self)
        original_start(self)
        if _after_start:
            caller = sys._getframe(1)
            for after in _after_start:
                after(self, caller)

    def _bootstrap_inner(self: threading.Thread) -> None:
        frame = sys._getframe()
        hooks = list(_run_hooks)
        tokens = []
        for enter, _ in hooks:
            try:
                tokens.append(enter(self, frame))
            except Exception:
                tokens.append(None)
        try:
            original_run(self)
        finally:
            for (_, leave), token in zip(reversed(hooks), reversed(tokens), strict=True):
                try:
                    leave(self, frame, token)
                except Exception:
                    pass

    start.__doc__ = original_start.__doc__
    start.__wrapped__ = original_start  # type: ignore[attr-defined]
    _bootstrap_inner.__wrapped__ = original_run  # type: ignore[attr-defined]
    bootstrap_code = _bootstrap_inner.__code__
    _own.register_code(start.__code__)  # they run the user's threads and their hooks
    _own.register_code(bootstrap_code)
    cls.start = start  # type: ignore[method-assign]
    cls._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]


# -- third-party methods and functions --------------------------------------------------------

_WRAP_MARK = "__pyproperf_wrapper__"
# "module.Class.name" of every attribute wrapped so far, in order.
wrapped: list[str] = []


def wrap_attribute(
    owner: Any, name: str, make: Callable[[Any], Callable[..., Any]], *, calls_user_code: bool
) -> None:
    """Replace ``owner.<name>`` (a class's method, a module's function) by ``make(original)``.

    A classmethod or staticmethod stays one: ``make`` gets and returns the
    plain function (a classmethod's takes the class first).

    Done once: an attribute that is our wrapper already is left as it is.
    ``calls_user_code``: the wrapper runs the user's code under it (a task's
    first step, a submitted job), so heap profiles keep what it allocates.
    """
    static = inspect.getattr_static(owner, name)
    kind = type(static) if isinstance(static, (classmethod, staticmethod)) else None
    original = static.__func__ if kind is not None else getattr(owner, name)
    if getattr(original, _WRAP_MARK, False):
        return
    wrapper = make(original)
    try:
        wrapper = functools.update_wrapper(wrapper, original)
    except AttributeError:  # pragma: no cover - a builtin without __name__ or __doc__
        pass
    setattr(wrapper, _WRAP_MARK, True)
    if calls_user_code:
        _own.calls_user_code(wrapper)
    setattr(owner, name, wrapper if kind is None else kind(wrapper))
    where = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", "?")
    module = getattr(owner, "__module__", None)
    wrapped.append(f"{module}.{where}.{name}" if isinstance(module, str) else f"{where}.{name}")


# -- imports ---------------------------------------------------------------------------------


class _HookedLoader:
    """Delegates to the real loader, then runs a hook on the fresh module."""

    def __init__(self, loader: Any, hook: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: Any) -> ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    @_own.calls_user_code
    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first: the module never sees this one.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            self.hook(module)
        except Exception as exc:  # a changed third-party module costs the feature only
            import warnings

            warnings.warn(
                f"pyproperf: could not hook {module.__name__}: {exc!r}", RuntimeWarning,
                stacklevel=2,
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _PostImportFinder:
    """Runs the hooks of a watched module right after it is imported."""

    def __init__(self) -> None:
        self.watched: dict[str, list[Callable[[ModuleType], None]]] = {}
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        hooks = self.watched.get(fullname)
        if hooks is None or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.name = None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        with _import_lock:
            hooks = self.watched.pop(fullname, hooks)
            _leave_meta_path_if_idle()

        def run_hooks(module: ModuleType) -> None:
            for hook in hooks:
                hook(module)

        spec.loader = _HookedLoader(spec.loader, run_hooks)
        return spec


_finder = _PostImportFinder()
_import_lock = threading.Lock()


def after_import(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Run ``hook(module)`` now if ``name`` is imported, else right after its import."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__spec__", None) is not None:
        hook(module)
        return
    with _import_lock:
        _finder.watched.setdefault(name, []).append(hook)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def cancel_import_hook(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Stop waiting to run ``hook`` for ``name`` (no-op if it ran or was never set)."""
    with _import_lock:
        hooks = _finder.watched.get(name)
        if hooks is not None and hook in hooks:
            hooks.remove(hook)
            if not hooks:
                del _finder.watched[name]
        _leave_meta_path_if_idle()


def _leave_meta_path_if_idle() -> None:
    if not _finder.watched and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


# -- fork and exit ---------------------------------------------------------------------------

_fork_child: list[Callable[[], None]] = []
_exit: list[Callable[[], None]] = []


def at_fork_child(fn: Callable[[], None]) -> None:
    """Run ``fn()`` in a forked child, in registration order."""
    _fork_child.append(fn)


def at_exit(fn: Callable[[], None]) -> None:
    """Run ``fn()`` at interpreter exit; like ``atexit``, the last registered runs first."""
    _exit.append(fn)


# -- the GIL switch interval ------------------------------------------------------------

class _SwitchInterval:
    """The program's own switch interval while the sampler's shorter one is in force."""

    program: float | None = None  # the program's own, while ours is set
    ours = 0.0
    program_chose = False  # the program set its own while ours was set: leave it be


def lower_switch_interval(seconds: float) -> None:
    """Make the switch interval ``seconds`` until ``restore_switch_interval``.

    Not when the program's is shorter already, nor after the program set
    its own while ours was in force (then it keeps it until the restore).
    """
    state = _SwitchInterval
    if state.program_chose:
        return
    current = sys.getswitchinterval()
    if state.program is None:
        if current <= seconds:
            return
        state.program = current
    elif current != state.ours:
        state.program, state.program_chose = None, True
        return
    elif current == seconds:
        return
    sys.setswitchinterval(seconds)
    state.ours = sys.getswitchinterval()


def switch_interval_lowered() -> bool:
    """Whether ``lower_switch_interval``'s interval is in force."""
    return _SwitchInterval.program is not None


def restore_switch_interval(*, keep_choice: bool = False) -> None:
    """Put back the program's switch interval, unless it has set another since.

    ``keep_choice``: the sampler may shorten it again later (it puts the
    program's back for a while): a program that chose its own interval
    keeps it then too.  Without it (sampling stops), that is forgotten.
    """
    state = _SwitchInterval
    program, state.program = state.program, None
    if not keep_choice:
        state.program_chose = False
    if program is not None and sys.getswitchinterval() == state.ours:
        sys.setswitchinterval(program)


def _after_fork_in_child() -> None:
    restore_switch_interval()
    for fn in _fork_child:
        try:
            fn()
        except Exception:
            pass


def _at_exit() -> None:
    with exit_work():  # a SIGTERM now waits until every exit function has run
        for fn in reversed(_exit):
            try:
                fn()
            except Exception as exc:  # at exit, a report beats a traceback
                print(f"pyproperf: at exit: {exc!r}", file=sys.stderr)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)


# -- os._exit and SIGTERM (run --subprocesses) ----------------------------------------------

_hard_exit: list[Callable[[], None]] = []


def at_hard_exit(fn: Callable[[], None]) -> None:
    """Run ``fn()`` when the process calls ``os._exit`` (which skips ``atexit``).

    Wraps ``os._exit`` on first use; code that saved ``os._exit`` under
    another name before that bypasses the wrapper.
    """
    _hard_exit.append(fn)

    def make(original: Callable[[int], Any]) -> Callable[[int], Any]:
        def _exit(status: int) -> Any:
            for hook in list(reversed(_hard_exit)):
                try:
                    hook()
                except Exception:
                    pass
            return original(status)

        return _exit

    wrap_attribute(os, "_exit", make, calls_user_code=False)


class _ExitWork:
    """Exit work in progress in this process (``exit_work``): SIGTERM waits for its end."""

    busy = 0
    sigterm_pending = False


def exit_work() -> Any:
    """A context manager around work done as the process ends (writing its profile).

    A SIGTERM that arrives meanwhile (``at_sigterm``'s handler, maybe on the
    very thread doing the work) does not kill the process mid-write: it is
    noted, and the process dies by it when the work is done.
    """
    import contextlib
    import signal

    @contextlib.contextmanager
    def work() -> Any:
        _ExitWork.busy += 1
        try:
            yield
        finally:
            _ExitWork.busy -= 1
            if not _ExitWork.busy and _ExitWork.sigterm_pending:
                _die_by(signal.SIGTERM)

    return work()


def _die_by(signum: int) -> None:
    import signal

    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def at_sigterm(fn: Callable[[], None], timeout: float = 10.0) -> bool:
    """Run ``fn()`` on SIGTERM, then die by SIGTERM; False if SIGTERM is not ours to take.

    Only where SIGTERM has its default action (death) and from the main
    thread.  The handler runs ``fn`` on a raw thread of its own and waits
    at most ``timeout`` seconds: the handler may have interrupted the main
    thread inside a lock ``fn`` needs, which would otherwise never be
    released.  Then the default action is restored and the signal raised
    again, so the parent sees the same death.  During ``exit_work`` the
    death waits for the work's end instead.
    """
    import signal

    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
    except (ValueError, OSError):
        return False
    real = real_thread()

    def handler(signum: int, frame: FrameType | None) -> None:
        if _ExitWork.busy:
            _ExitWork.sigterm_pending = True
            return
        done = real.allocate_lock()
        done.acquire()

        def work() -> None:
            try:
                fn()
            except Exception:
                pass
            finally:
                done.release()

        try:
            try:
                real.start_new_thread(work, ())
            except RuntimeError:  # the interpreter is shutting down: no new thread, so here
                work()
            done.acquire(True, timeout)
        finally:
            _die_by(signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread
        return False
    return True

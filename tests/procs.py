"""Child processes in tests: never left running when a test gives up on one."""

from __future__ import annotations

import subprocess


def communicate_or_kill(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """``proc.communicate(timeout)``; on timeout kill the process, then raise.

    A program that ignored the signal a test sent would otherwise spin on
    after the test failed, and load the machine under every later test.
    """
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise

"""Small operating-system helpers shared by the dataset tool, the run directory and the
reports: processes, the native stderr, and how a span of time is written."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def held_interrupts():
    """Hold Ctrl-C (SIGINT) back inside the block and deliver it at its end (to the handler
    there was: KeyboardInterrupt, or a trainer's stop request), so files written together (a
    result line and the summary derived from it) are written together."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)
    elif received and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


@contextlib.contextmanager
def held_native_stderr():
    """Hold back what C++ code writes to file descriptor 2 inside the block (TensorFlow's
    start-up lines about oneDNN and CPU features); show it only if the block fails with an
    error (a Ctrl-C or an exit is not a failure to explain: the lines stay held back)."""
    try:
        stderr = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured): nothing to hold
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), stderr)
        try:
            yield
        except Exception:
            os.dup2(saved, stderr)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, stderr)
            os.close(saved)


def duration(seconds: float) -> str:
    """``3725`` -> ``"1h 02m"``; ``75`` -> ``"1m 15s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24:02d}h"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"

"""Small operating-system helpers shared by the dataset tool and the run directory."""

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
def held_native_stderr():
    """Hold back what C++ code writes to file descriptor 2 inside the block (TensorFlow's
    start-up lines about oneDNN and CPU features); show it only if the block fails."""
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
        except BaseException:
            os.dup2(saved, stderr)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, stderr)
            os.close(saved)

"""Keep native libraries' chatter off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def captured_output(log_path: Path | None = None) -> Iterator[None]:
    """Send what TensorFlow's C++ and Python layers print to a log file instead of the terminal.

    The converter writes hundreds of lines to the process's stdout/stderr file descriptors,
    which Python-level redirection does not catch, so the descriptors themselves are swapped.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if log_path is not None:
                sink.seek(0)
                with open(log_path, "ab") as log:
                    log.write(sink.read())

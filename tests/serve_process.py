"""``crmroute serve`` as a child process, its log read as it is written.

The log is read by a thread as the server writes it, so a chatty server never
blocks on a full pipe, and a test can wait for a line to appear (an event,
not a sleep). The server binds a free port of its own choosing
(``--port 0``); :attr:`ServeProcess.port` is read from its "listening" line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class ServeProcess:
    """One ``crmroute serve --config FILE --port 0``; use as a context manager (killed on exit).

    The constructor waits until it listens, unless ``wait=False`` (then see :meth:`wait_listening`).
    """

    def __init__(
        self,
        config: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        wait: bool = True,
    ):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastagi_server", *args, "serve", "--config", str(config), "--port", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})}, preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 30.0) -> int:
        """Wait for the "listening" line; returns (and keeps) the port."""
        self.port = int(self.wait_for(_LISTENING, timeout).group(1))
        return self.port

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "surrogateescape").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """The first log line (from index ``start``) matching ``pattern``; AssertionError if the server ends or the time runs out first."""
        expression = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._changed:
            def found() -> re.Match[str] | None:
                return next((m for line in self.lines[start:] if (m := expression.search(line))), None)

            ended = lambda: self.proc.poll() is not None and not self._reader.is_alive()  # noqa: E731
            self._changed.wait_for(lambda: found() is not None or ended(), timeout)
            match = found()
        if match is None:
            raise AssertionError(f"no log line matching {expression.pattern!r}; log:\n" + "\n".join(self.lines[-40:]))
        return match

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``signum`` and wait for the exit status (the log is then complete)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)

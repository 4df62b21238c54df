"""A slowloris peer: holds many connections open, each sending one byte a second and never a whole header block.

When the server drops one, it connects again (at most ``--reconnect-rate`` new
connections a second, as slowloris tools pace themselves), so the server
faces ``--connections`` of them for as long as it runs. Loopback only. Runs
until SIGTERM, then prints one JSON object: connections made, dropped by
the server, and the most held at once.

    python benchmarks/slowloris.py --port 4573 --connections 1000
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
import time


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--reconnect-rate", type=float, default=200.0, help="new connections per second at most")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--ready-file", default="", help="written once every connection has been made once")
    return parser.parse_args(argv)


class Holder:
    """The connections and what happened to them."""

    def __init__(self, port: int, target: int, rate: float):
        self.port = port
        self.target = target
        self.interval = 1.0 / rate
        self.selector = selectors.DefaultSelector()
        self.open: set[socket.socket] = set()
        self.made = 0
        self.dropped = 0
        self.most_held = 0
        self.failed_connects = 0
        self.stopping = False

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            self.failed_connects += 1
            sock.close()
            return
        self.selector.register(sock, selectors.EVENT_READ)
        self.open.add(sock)
        self.made += 1

    def lost(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self.open.discard(sock)
        sock.close()
        self.dropped += 1

    def trickle(self) -> None:
        """One byte on every connection (a header that never ends)."""
        for sock in list(self.open):
            try:
                sock.send(b"a")
            except BlockingIOError:
                pass
            except OSError:
                self.lost(sock)

    def run(self, ready_file: str) -> None:
        next_connect = next_trickle = time.monotonic()
        ready = False
        while not self.stopping:
            now = time.monotonic()
            while len(self.open) < self.target and now >= next_connect:
                self.connect()
                next_connect += self.interval
            next_connect = max(next_connect, now - 1.0)  # no burst after a pause
            self.most_held = max(self.most_held, len(self.open))
            if not ready and self.made >= self.target and ready_file:
                with open(ready_file, "w") as marker:
                    marker.write(str(self.made))
                ready = True
            if now >= next_trickle:
                self.trickle()
                next_trickle = now + 1.0
            for key, _ in self.selector.select(timeout=min(0.05, max(0.0, next_connect - now))):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.lost(sock)

    def report(self) -> dict:
        return {"connections_made": self.made, "dropped_by_server": self.dropped, "most_held": self.most_held, "failed_connects": self.failed_connects}


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    holder = Holder(options.port, options.connections, options.reconnect_rate)

    def stop(signum: int, frame: object) -> None:
        holder.stopping = True

    signal.signal(signal.SIGTERM, stop)
    holder.run(options.ready_file)
    json.dump(holder.report(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

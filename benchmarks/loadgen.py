"""A load generator that plays Asterisk's side of FastAGI, fast.

Each session connects over TCP (loopback only), writes the header block Asterisk 22 sends,
answers every command with the reply Asterisk would give (``SET VARIABLE``,
``EXEC MSet``/``Set``, ``GET FULL VARIABLE ${DEVICE_STATE(...)}``,
``GET VARIABLE``, ``VERBOSE``; ``510`` for anything else, ``511`` on a dead
channel) and, on a share of the calls, an unsolicited ``HANGUP`` line before
its first reply. It never answers a command before it has read it, so a
server that pipelines is caught (``pipelined`` in the result).

The timed loop (a plain epoll loop, no asyncio: it must cost less per
session than the servers it measures) only frames lines and looks replies up; every byte the server
wrote is kept and, after the clock stops, replayed through the faithful model
of Asterisk's parsers in ``tests/asterisk_peer.py`` to check each session got
the whole dialplan contract with the expected route.

Run by ``run.py``; standalone: ``python benchmarks/loadgen.py --port 4573 --sessions 1000``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from asterisk_peer import AsteriskPeer, CallResult, asterisk_headers, header_block, parse_args
from report import percentiles

CONTRACT_VARIABLES = (
    "CRM_ROUTE_STATUS", "CRM_TARGET", "CRM_EXTENSION", "CRM_OWNER_ID", "CRM_OWNER_NAME", "CRM_OWNER_EMAIL",
    "CRM_MODULE", "CRM_RECORD_ID", "CRM_CALLER_NAME", "CRM_LOOKUP_MS", "CRM_ROUTE_REASON",
)

# Replies by command verb; ``None``: needs a look at the arguments.
_REPLIES = {
    b"SET VARIABLE ": b"200 result=1\n",
    b"EXEC MSet ": b"200 result=0\n",
    b"EXEC Set ": b"200 result=0\n",
    b"EXEC NoOp": b"200 result=0\n",
    b"VERBOSE ": b"200 result=1\n",
    b"NOOP": b"200 result=0\n",
    b"GET FULL VARIABLE ": None,
    b"GET VARIABLE ": None,
}
# What Asterisk still does on a dead channel (checked on Asterisk 22).
_DEAD_OK = (b"SET VARIABLE ", b"EXEC ", b"GET FULL VARIABLE ", b"GET VARIABLE ", b"VERBOSE ", b"NOOP", b"DATABASE ")
_INVALID = b"510 Invalid or unknown command\n"
_DEAD = b"511 Command Not Permitted on a dead channel or intercept routine\n"
# res_agi reads a command into an 8192-byte buffer (2048 before Asterisk 13).
MAX_COMMAND_LINE = 8190


class Generator:
    """Shared state of one run: what to send, what came back, the figures."""

    def __init__(self, args: argparse.Namespace, callers: list[dict]):
        self.args = args
        self.callers = callers
        self.device_states: dict[str, str] = args.device_states
        self.headers = [self._header_template(c["caller"]) for c in callers]
        self.reply_cache: dict[bytes, bytes] = {}
        self.latencies: list[float] = []
        self.decisions: list[float] = []  # header block written -> first command read
        self.outputs: list[tuple[int, bytes]] = []  # (caller index, every byte the server wrote)
        self.failed = 0
        self.timeouts = 0
        self.pipelined = 0
        self.oversized = 0
        self.hangups = 0
        self.commands = 0

    def _header_template(self, caller: str) -> tuple[bytes, bytes]:
        block = header_block(asterisk_headers(script=self.args.script, caller=caller, uniqueid="@UID@", arguments=tuple(self.args.agi_args)))
        before, _, after = block.partition(b"@UID@")
        return before, after

    def header_block(self, index: int) -> bytes:
        before, after = self.headers[index % len(self.headers)]
        return b"%s1700000000.%d%s" % (before, index, after)

    def replies(self, session: Session, data: bytes) -> bytes:
        """The replies to the complete command lines in ``data`` (a HANGUP line first, on a hang-up call)."""
        buffer = session.pending + data if session.pending else data
        out = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if len(line) > MAX_COMMAND_LINE:
                self.oversized += 1
            if out and out[-1] != b"HANGUP\n":  # a second command before our reply: Asterisk would stall
                self.pipelined += 1
            if session.hangup and not session.dead:
                session.dead = True
                self.hangups += 1
                out.append(b"HANGUP\n")
            self.commands += 1
            out.append(self.reply(line, session.dead))
        session.pending = buffer[start:]
        return b"".join(out)

    def reply(self, line: bytes, dead: bool) -> bytes:
        for verb, answer in _REPLIES.items():
            if line.startswith(verb):
                if dead and not line.startswith(_DEAD_OK):
                    return _DEAD
                return answer if answer is not None else self._look_up(line)
        return _DEAD if dead and not line.startswith(_DEAD_OK) else _INVALID

    def _look_up(self, line: bytes) -> bytes:
        cached = self.reply_cache.get(line)
        if cached is None:
            peer = AsteriskPeer(device_states=self.device_states)
            cached = peer.reply(parse_args(line.decode("utf-8", "replace")), CallResult()).encode("utf-8") + b"\n"
            if len(self.reply_cache) < 10_000:
                self.reply_cache[line] = cached
        return cached


class Session:
    """One call: the header block, then a reply to each command, until the server closes."""

    __slots__ = ("index", "sock", "hangup", "dead", "started", "first", "chunks", "pending")

    def __init__(self, index: int, sock: socket.socket, hangup: bool, started: float):
        self.index = index
        self.sock = sock
        self.hangup = hangup
        self.dead = False
        self.started = started
        self.first = 0.0
        self.chunks: list[bytes] = []
        self.pending = b""


def generate(gen: Generator) -> dict:
    """Run the sessions: ``concurrency`` at a time, until ``sessions`` or ``max_seconds``.

    A plain epoll loop rather than asyncio: the generator must cost less per
    session than the servers it measures, and on loopback the connection is
    made by the kernel at once, so a blocking ``connect`` and ``send`` never
    wait; only the replies are waited for.
    """
    args = gen.args
    address = (args.host, args.port)
    share = args.hangup_share
    epoll = select.epoll()
    active: dict[int, Session] = {}
    perf = time.perf_counter
    started = perf()
    cpu_started = _cpu_seconds()
    stop_at = started + args.max_seconds
    next_index = 0
    next_timeout_scan = started + 0.5

    def finish(session: Session, ok: bool) -> None:
        del active[session.sock.fileno()]
        session.sock.close()  # also leaves the epoll set
        if not ok:
            gen.failed += 1
            return
        ended = perf()
        gen.latencies.append(ended - session.started)
        gen.decisions.append((session.first or ended) - session.started)
        gen.outputs.append((session.index % len(gen.callers), b"".join(session.chunks)))

    while True:
        now = perf()
        while len(active) < args.concurrency and next_index < args.sessions and now < stop_at:
            index = next_index
            next_index += 1
            sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
            session = Session(index, sock, share > 0 and int((index + 1) * share) != int(index * share), perf())
            try:
                sock.connect(address)
                sock.sendall(gen.header_block(index))
            except OSError:
                sock.close()
                gen.failed += 1
                continue
            active[sock.fileno()] = session
            epoll.register(sock.fileno(), select.EPOLLIN)
        if not active:
            break
        for fd, _ in epoll.poll(0.5):
            session = active[fd]
            try:
                data = session.sock.recv(65536)
            except OSError:
                finish(session, False)
                continue
            if not data:
                finish(session, True)
                continue
            if not session.first:
                session.first = perf()
            session.chunks.append(data)
            replies = gen.replies(session, data)
            if replies:
                try:
                    session.sock.sendall(replies)
                except OSError:
                    finish(session, False)
        if now > next_timeout_scan:
            next_timeout_scan = now + 0.5
            for session in [s for s in active.values() if now - s.started > args.timeout]:
                gen.timeouts += 1
                finish(session, False)
    epoll.close()
    elapsed = perf() - started
    cpu = _cpu_seconds() - cpu_started
    completed = len(gen.latencies)
    return {
        "sessions": next_index,
        "completed": completed,
        "failed": gen.failed,
        "timeouts": gen.timeouts,
        "elapsed_s": elapsed,
        "sessions_per_s": completed / elapsed if elapsed else 0.0,
        "latency_ms": percentiles(gen.latencies),
        "decision_ms": percentiles(gen.decisions),
        "commands_per_session": gen.commands / completed if completed else 0.0,
        "hangups_sent": gen.hangups,
        "pipelined": gen.pipelined,
        "oversized_lines": gen.oversized,
        "loadgen_cpu_us_per_session": cpu / completed * 1e6 if completed else 0.0,
        "loadgen_cpu_share": cpu / elapsed if elapsed else 0.0,
    }


def verify(gen: Generator) -> dict:
    """Replay what each session received through the Asterisk model; count sessions whose
    variables match what that caller should get."""
    checked = ok = 0
    problems: list[str] = []
    seen: dict[tuple[int, bytes], str] = {}
    for caller_index, raw in gen.outputs:
        # Most sessions of one caller get the same bytes: check each variant once.
        key = (caller_index, raw)
        problem = seen.get(key)
        if problem is None:
            problem = _check_session(raw, gen.callers[caller_index], gen.args.expect)
            if len(seen) < 50_000:
                seen[key] = problem
        checked += 1
        if problem:
            if len(problems) < 5:
                problems.append(problem)
        else:
            ok += 1
    return {"checked": checked, "ok": ok, "bad": checked - ok, "problems": problems}


def _check_session(raw: bytes, caller: dict, expect: str) -> str:
    peer = AsteriskPeer(device_states=dict(caller.get("device_states", {})))
    result = CallResult()
    for line in raw.split(b"\n")[:-1]:
        argv = parse_args(line.decode("utf-8", "replace"))
        try:
            peer.reply(argv, result)
        except ValueError as exc:
            return f"unparseable command {line[:60]!r}: {exc}"
    if result.evaluated:
        return f"EXEC data would be evaluated by Asterisk: {result.evaluated[:2]}"
    variables = result.variables
    if expect == "contract":
        missing = [name for name in CONTRACT_VARIABLES if name not in variables]
        if missing:
            return f"caller {caller['caller']}: contract variables not set: {missing}"
    elif not variables:
        return f"caller {caller['caller']}: no variable set"
    for name, value in caller.get("expected", {}).items():
        if variables.get(name) != value:
            return f"caller {caller['caller']}: {name}={variables.get(name)!r}, expected {value!r}"
    return ""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_args_cli(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--hangup-share", type=float, default=0.1, help="share of calls that get a HANGUP line (0..1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-session limit, seconds")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop starting sessions after this")
    parser.add_argument("--script", default="route")
    parser.add_argument("--agi-arg", dest="agi_args", action="append", default=[], help="agi_arg_N values (repeatable)")
    parser.add_argument("--callers", default="", help='JSON list of {"caller": ..., "expected": {VAR: value}}')
    parser.add_argument("--device-states", type=json.loads, default={}, help="JSON: device -> DEVICE_STATE answer")
    parser.add_argument("--expect", choices=("contract", "any"), default="contract")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("::1", "localhost"):
        parser.error("the load generator only targets loopback addresses")
    if not 0 <= args.hangup_share <= 1:
        parser.error("--hangup-share must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args_cli(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    callers = json.loads(args.callers) if args.callers else [{"caller": "+34928000000"}]
    gen = Generator(args, callers)
    result = generate(gen)
    result["verification"] = {"checked": 0, "ok": 0, "bad": 0, "problems": []} if args.no_verify else verify(gen)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Asterisk's dialplan, enough of it to run ``extensions.conf.sample`` and the README's snippets.

It parses ``extensions.conf`` as ``pbx_config`` does (contexts, ``[globals]``,
``exten =>`` and ``same =>`` lines, priority labels, ``;`` comments) and runs
a call through it the way ``pbx.c`` does: variables substituted into an
application's data before it runs (``${VAR}``, ``${ARGn}``, ``${EXTEN}``,
``${LEN(...)}``, ``${CALLERID(num)}``, ``$[...]``), exact extensions before
patterns, ``Gosub`` frames with their arguments, and, when the caller hangs
up, the hangup handlers pushed with ``CHANNEL(hangup_handler_push)``, run in
their own context where ``${EXTEN}`` is ``s``.

``AGI()`` is real: ``agi://`` connects to a server over TCP and plays
Asterisk's side with :class:`~asterisk_peer.AsteriskPeer`; a script path runs
a process AGI (see ``scripts``). A connection refused gives
``AGISTATUS=FAILURE``, as on Asterisk. ``hagi://name/script`` does what
``res_agi.c``'s ``launch_ha_netscript`` does: it looks up the SRV records of
``_agi._tcp.name`` (the test's ``srv`` table), tries each target in priority
order and moves on to the next only when connecting fails; a server that
accepts and then closes is not failed over (``AGISTATUS=SUCCESS``, whatever it
set). A port in a ``hagi://`` URI turns SRV off, as on Asterisk. ``Dial()`` and ``Queue()`` are the
test's to answer; ``Queue()`` of a queue ``queues.conf`` does not define
declines the call at once, as Asterisk does.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from asterisk_peer import AsteriskPeer, CallResult, asterisk_headers, header_block, parse_args

_LINE = re.compile(r"^\s*(exten|same)\s*=>\s*(.*)$")
_PRIORITY = re.compile(r"^(\d+|n|hint)(?:\((\w+)\))?$")
_APP = re.compile(r"^(\w+)(?:\((.*)\))?$", re.S)


class DialplanError(Exception):
    """The dialplan does something this model (or Asterisk) cannot run."""


@dataclass
class Step:
    priority: int
    label: str
    app: str
    data: str


@dataclass
class Dialplan:
    contexts: dict[str, dict[str, list[Step]]] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Dialplan:
        plan = cls()
        context = ""
        last: tuple[str, list[Step]] | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                context = line[1:-1].strip()
                plan.contexts.setdefault(context, {})
                last = None
                continue
            if not context:
                raise DialplanError(f"line {number}: outside any context: {raw!r}")
            if context == "globals":
                name, sep, value = line.partition("=")
                if not sep:
                    raise DialplanError(f"line {number}: not NAME=value in [globals]: {raw!r}")
                plan.globals[name.strip()] = value.strip()
                continue
            found = _LINE.match(line)
            if not found:
                raise DialplanError(f"line {number}: not an exten/same line: {raw!r}")
            kind, rest = found.groups()
            if kind == "exten":
                pattern, rest = rest.split(",", 1)
                steps = plan.contexts[context].setdefault(pattern.strip(), [])
                last = (pattern.strip(), steps)
            elif last is None:
                raise DialplanError(f"line {number}: 'same' without an extension before it")
            priority_text, app_text = rest.split(",", 1)
            pri = _PRIORITY.match(priority_text.strip())
            if not pri:
                raise DialplanError(f"line {number}: bad priority {priority_text!r}")
            steps = last[1]
            value = int(pri.group(1)) if pri.group(1).isdigit() else (steps[-1].priority + 1 if steps else 1)
            app = _APP.match(app_text.strip())
            if not app:
                raise DialplanError(f"line {number}: bad application {app_text!r}")
            steps.append(Step(value, pri.group(2) or "", app.group(1), app.group(2) or ""))
        return plan

    def find(self, context: str, exten: str) -> tuple[str, list[Step]]:
        """The extension of ``context`` that ``exten`` runs: an exact match first, then a pattern."""
        extensions = self.contexts.get(context)
        if extensions is None:
            raise DialplanError(f"no context [{context}]")
        if exten in extensions:
            return exten, extensions[exten]
        for pattern, steps in extensions.items():
            if pattern.startswith("_") and _pattern_matches(pattern[1:], exten):
                return pattern, steps
        raise DialplanError(f"no extension {exten!r} in [{context}]")


def _strip_comment(line: str) -> str:
    out, i = [], 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            out.append(line[i + 1])
            i += 2
            continue
        if line[i] == ";":
            break
        out.append(line[i])
        i += 1
    return "".join(out)


def _pattern_matches(pattern: str, exten: str) -> bool:
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i].upper()
        if ch == "X":
            regex += "[0-9]"
        elif ch == "Z":
            regex += "[1-9]"
        elif ch == "N":
            regex += "[2-9]"
        elif ch == ".":
            regex += ".+"
        elif ch == "!":
            regex += ".*"
        elif ch == "[":
            end = pattern.index("]", i)
            regex += "[" + pattern[i + 1 : end] + "]"
            i = end
        else:
            regex += re.escape(pattern[i])
        i += 1
    return re.fullmatch(regex, exten) is not None


@dataclass
class Frame:
    context: str
    exten: str
    steps: list[Step]
    index: int
    args: list[str] = field(default_factory=list)


@dataclass
class Channel:
    """One inbound call as the dialplan sees it."""

    caller: str
    dnid: str
    uniqueid: str = "1700000000.1"
    name: str = "PJSIP/trunk-00000001"
    variables: dict[str, str] = field(default_factory=dict)
    caller_name: str = ""
    hung_up: bool = False
    hangup_handlers: list[tuple[str, str, str, list[str]]] = field(default_factory=list)
    # What happened, for the test: ("App", substituted data) per application run.
    ran: list[tuple[str, str]] = field(default_factory=list)
    queues_joined: list[str] = field(default_factory=list)
    declined: str = ""
    # Each FastAGI session that connected: (script, port of the server it reached).
    sessions: list[tuple[str, int]] = field(default_factory=list)


Dialler = Callable[[str, Channel], dict[str, str]]
# SRV records: "_agi._tcp.name" -> [(priority, weight, host, port)].
SrvTable = dict[str, list[tuple[int, int, str, int]]]


class Pbx:
    """Runs calls through a :class:`Dialplan`.

    ``dial`` answers ``Dial(target,...)`` with the variables it leaves (``DIALSTATUS``...);
    ``queues`` are the queues queues.conf defines; ``scripts`` maps a process
    AGI's path to the command that runs it; ``globals`` override ``[globals]``;
    ``srv`` holds the SRV records ``hagi://`` looks up; ``peer_factory`` makes
    the :class:`AsteriskPeer` of each FastAGI session from the channel's variables.
    """

    def __init__(
        self,
        plan: Dialplan,
        *,
        dial: Dialler | None = None,
        queues: set[str] | None = None,
        scripts: dict[str, list[str]] | None = None,
        script_env: dict[str, str] | None = None,
        globals: dict[str, str] | None = None,
        srv: SrvTable | None = None,
        peer_factory: Callable[[dict[str, str]], AsteriskPeer] | None = None,
    ):
        self.plan = plan
        self.srv = srv or {}
        self.peer_factory = peer_factory or (lambda variables: AsteriskPeer(channel_variables=variables))
        self.dial = dial or (lambda target, channel: {"DIALSTATUS": "NOANSWER"})
        self.queues = queues or set()
        self.scripts = scripts or {}
        self.script_env = script_env
        self.globals = {**plan.globals, **(globals or {})}

    async def call(self, context: str, exten: str, channel: Channel, *, hang_up_after: int | None = None) -> Channel:
        """Run ``channel`` from ``context``/``exten``; the caller hangs up after ``hang_up_after`` applications."""
        pattern, steps = self.plan.find(context, exten)
        stack = [Frame(context, exten, steps, 0)]
        count = 0
        while stack and not channel.hung_up:
            if hang_up_after is not None and count >= hang_up_after:
                channel.hung_up = True
                break
            await self._run_next(stack, channel)
            count += 1
        channel.hung_up = True
        for handler_context, handler_exten, priority, args in list(channel.hangup_handlers):
            _, handler_steps = self.plan.find(handler_context, handler_exten)
            frames = [Frame(handler_context, handler_exten, handler_steps, _index_of(handler_steps, priority), args)]
            while frames:
                await self._run_next(frames, channel, in_handler=True)
        return channel

    async def _run_next(self, stack: list[Frame], channel: Channel, in_handler: bool = False) -> None:
        frame = stack[-1]
        if frame.index >= len(frame.steps):
            stack.pop()  # the extension ran out of priorities: Asterisk ends the call
            if stack and not in_handler:
                stack.clear()
            return
        step = frame.steps[frame.index]
        frame.index += 1
        data = self.substitute(step.data, channel, frame)
        channel.ran.append((step.app, data))
        await self._application(step.app, data, stack, channel)

    async def _application(self, app: str, data: str, stack: list[Frame], channel: Channel) -> None:
        frame = stack[-1]
        name = app.lower()
        if name in ("noop", "ringing", "answer", "wait", "verbose", "mixmonitor"):
            return
        if name == "set":
            self._set(data, channel)
        elif name == "gosub":
            target, args = _location(data)
            context, exten, priority = _split_location(target, frame)
            _, steps = self.plan.find(context, exten)
            stack.append(Frame(context, exten, steps, _index_of(steps, priority), args))
        elif name == "return":
            stack.pop()
        elif name == "gotoif":
            condition, _, branches = data.partition("?")
            yes, _, no = branches.partition(":")
            label = yes if _true(condition) else no
            if label:
                frame.index = _index_of(frame.steps, label)
        elif name == "hangup":
            stack.clear()
        elif name == "dial":
            channel.variables.update(self.dial(data.split(",")[0], channel))
        elif name == "queue":
            queue = data.split(",")[0]
            if queue not in self.queues:
                channel.declined = f"Unable to join queue '{queue}'"
                stack.clear()
                channel.hung_up = True
            else:
                channel.queues_joined.append(queue)
        elif name == "agi":
            await self._agi(data, frame, channel)
        else:
            raise DialplanError(f"application {app}() is not modelled")

    def _set(self, data: str, channel: Channel) -> None:
        name, sep, value = data.partition("=")
        if not sep:
            raise DialplanError(f"Set({data}) has no '='")
        if name == "CHANNEL(hangup_handler_push)":
            target, args = _location(value)
            context, exten, priority = target.split(",")
            channel.hangup_handlers.append((context, exten, priority, args))
        elif name == "CALLERID(name)":
            channel.caller_name = value
        else:
            channel.variables[name] = value

    def substitute(self, text: str, channel: Channel, frame: Frame) -> str:
        """``pbx_substitute_variables``: innermost expressions first."""
        out = []
        i = 0
        while i < len(text):
            if text.startswith("${", i) or text.startswith("$[", i):
                opening, closing = text[i + 1], "}" if text[i + 1] == "{" else "]"
                depth, j = 1, i + 2
                while j < len(text) and depth:
                    depth += {opening: 1, closing: -1}.get(text[j], 0)
                    j += 1
                inner = self.substitute(text[i + 2 : j - 1], channel, frame)
                out.append(self._variable(inner, channel, frame) if opening == "{" else _expression(inner))
                i = j
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def _variable(self, name: str, channel: Channel, frame: Frame) -> str:
        if name.startswith("LEN(") and name.endswith(")"):
            return str(len(name[4:-1]))
        if name == "CALLERID(num)":
            return channel.caller
        if name == "CALLERID(name)":
            return channel.caller_name
        if name == "EXTEN":
            return frame.exten
        if name == "UNIQUEID":
            return channel.uniqueid
        if name == "CONTEXT":
            return frame.context
        if re.fullmatch(r"ARG\d+", name):
            index = int(name[3:]) - 1
            return frame.args[index] if index < len(frame.args) else ""
        if name in channel.variables:
            return channel.variables[name]
        return self.globals.get(name, "")

    async def _agi(self, data: str, frame: Frame, channel: Channel) -> None:
        script, *args = data.split(",")
        headers = asterisk_headers(
            script=urlsplit(script).path.lstrip("/") if "://" in script else script,
            caller=channel.caller,
            caller_name=channel.caller_name,
            uniqueid=channel.uniqueid,
            dnid=channel.dnid,
            extension=frame.exten,
            channel=channel.name,
            arguments=tuple(args),
        )
        headers = [(k, frame.context if k == "agi_context" else v) for k, v in headers]
        try:
            if "://" in script:
                variables = await self._fastagi(script, headers, channel)
            else:
                variables = await self._process(script, args, headers, channel)
        except FileNotFoundError:
            channel.variables["AGISTATUS"] = "NOTFOUND"  # no such script: Asterisk goes on
            return
        except (ConnectionError, OSError):
            channel.variables["AGISTATUS"] = "FAILURE"
            return
        channel.variables.update(variables)
        channel.variables["AGISTATUS"] = "SUCCESS"

    async def _fastagi(self, url: str, headers: list[tuple[str, str]], channel: Channel) -> dict[str, str]:
        parts = urlsplit(url)
        if parts.scheme != "hagi" or parts.port:
            return await self._netscript(url, headers, channel)
        # launch_ha_netscript: every SRV target in order, the next only when connecting failed.
        records = sorted(self.srv.get(f"_agi._tcp.{parts.hostname}", ()), key=lambda r: (r[0], -r[1]))
        for _, _, host, port in records:
            try:
                return await self._netscript(f"agi://{host}:{port}{parts.path}", headers, channel)
            except (ConnectionError, OSError):
                continue  # refused (or no route): the next target, as Asterisk does
        raise ConnectionRefusedError(f"could not connect to any host of {parts.hostname}")

    async def _netscript(self, url: str, headers: list[tuple[str, str]], channel: Channel) -> dict[str, str]:
        parts = urlsplit(url)
        headers = [(k, url if k == "agi_request" else v) for k, v in headers]
        peer = self.peer_factory(channel.variables)
        peer.dead = channel.hung_up
        port = parts.port or 4573
        reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", port)
        channel.sessions.append((parts.path.lstrip("/"), port))
        try:
            result = await peer.call(port, headers, connection=(reader, writer))
        except (ConnectionError, OSError):
            # Connected, then the server was gone (killed mid-session): Asterisk
            # says AGISTATUS=SUCCESS, with only what was set before.
            return {}
        return result.variables

    async def _process(self, path: str, args: list[str], headers: list[tuple[str, str]], channel: Channel) -> dict[str, str]:
        command = self.scripts.get(path)
        if command is None:
            raise FileNotFoundError(path)
        headers = [(k, path if k == "agi_request" else v) for k, v in headers if k not in ("agi_network", "agi_network_script")]
        proc = await asyncio.create_subprocess_exec(
            *command, *args,  # a process AGI gets its arguments on the command line too
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.script_env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        peer = AsteriskPeer(channel_variables=channel.variables)
        peer.dead = channel.hung_up
        result = CallResult(variables=dict(channel.variables))
        proc.stdin.write(header_block(headers))
        await proc.stdin.drain()
        while line := await asyncio.wait_for(proc.stdout.readline(), 30):
            argv = parse_args(line.rstrip(b"\n").decode("utf-8", "replace"))
            result.commands.append(argv)
            proc.stdin.write(peer.reply(argv, result).encode() + b"\n")
            await proc.stdin.drain()
        proc.stdin.close()
        await proc.wait()
        return result.variables


def _index_of(steps: list[Step], priority: str) -> int:
    for index, step in enumerate(steps):
        if str(step.priority) == priority or step.label == priority:
            return index
    raise DialplanError(f"no priority or label {priority!r}")


def _location(text: str) -> tuple[str, list[str]]:
    """``ctx,exten,1(a,b)`` -> (``ctx,exten,1``, [a, b])."""
    if text.endswith(")") and "(" in text:
        target, _, args = text[:-1].partition("(")
        return target, args.split(",")
    return text, []


def _split_location(target: str, frame: Frame) -> tuple[str, str, str]:
    parts = target.split(",")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return frame.context, parts[0], parts[1]
    return frame.context, frame.exten, parts[0]


def _true(value: str) -> bool:
    text = value.strip()
    return bool(text) and text != "0"


_COMPARISON = re.compile(r'^\s*("(?:[^"]*)"|\S*)\s*(!=|=|<|>)\s*("(?:[^"]*)"|\S*)\s*$')


def _expression(text: str) -> str:
    """``$[...]`` for the comparisons a dialplan uses: ``a = b``, ``"a" != "b"``."""
    found = _COMPARISON.match(text)
    if not found:
        raise DialplanError(f"$[{text}] is not an expression this model evaluates")
    left, op, right = (part.strip('"') for part in found.groups())
    if op in ("<", ">"):
        result = (float(left) < float(right)) if op == "<" else (float(left) > float(right))
    else:
        result = (left == right) == (op == "=")
    return "1" if result else "0"

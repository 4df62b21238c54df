"""A stand-in for Asterisk's side of AGI, for tests and benchmarks.

It speaks as Asterisk 22 does: the header block, then one reply per command
(``200 result=1``, ``510``, the ``520-`` usage block), ``HANGUP`` lines when
told to, and reads commands the way ``res_agi.c`` does: a line at most 2047
bytes long (a longer one is cut and its tail read as the next command) and
split into arguments with ``parse_args``. So a test sees exactly what a real
PBX would execute.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

# res_agi.c: char buf[AGI_BUF_LEN] with AGI_BUF_LEN 2048; fgets keeps one byte for NUL.
AGI_BUF_LEN = 2048

_REFERENCE = re.compile(r"\$\{([^{}]*)\}")

USAGE_REPLY = "520-Invalid command syntax.  Proper usage follows:\nUsage: SET VARIABLE <variablename> <value>\n520 End of proper usage."


def asterisk_headers(
    *,
    script: str = "route",
    caller: str = "+34928000000",
    caller_name: str = "",
    uniqueid: str = "1700000000.1",
    dnid: str = "unknown",
    extension: str = "900",
    channel: str = "Local/900@inbound-00000001;2",
    arguments: tuple[str, ...] = (),
    host: str = "127.0.0.1:4573",
) -> list[tuple[str, str]]:
    """The header block Asterisk 22 sends, in its order (see the design notes)."""
    headers = [
        ("agi_network", "yes"),
        ("agi_network_script", script),
        ("agi_request", f"agi://{host}/{script}"),
        ("agi_channel", channel),
        ("agi_language", "en"),
        ("agi_type", "Local"),
        ("agi_uniqueid", uniqueid),
        ("agi_version", "22.10.0"),
        ("agi_callerid", caller),
        ("agi_calleridname", caller_name or "unknown"),
        ("agi_callingpres", "0"),
        ("agi_callingani2", "0"),
        ("agi_callington", "0"),
        ("agi_callingtns", "0"),
        ("agi_dnid", dnid),
        ("agi_rdnis", "unknown"),
        ("agi_context", "inbound"),
        ("agi_extension", extension),
        ("agi_priority", "2"),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""),
        ("agi_threadid", "140000000000000"),
    ]
    headers += [(f"agi_arg_{i}", arg) for i, arg in enumerate(arguments, 1)]
    return headers


def answered_call_channel(started_at: float) -> dict[str, str]:
    """What a channel holds when its hangup handler runs, after ``route`` sent the
    demo caller +34928000000 to Ana (101) and she answered a 42 s call."""
    return {
        "DIALSTATUS": "ANSWER",
        "ANSWEREDTIME": "42",
        "ANSWEREDTIME_MS": "42310",
        "DIALEDTIME_MS": "51000",
        "DIALEDPEERNUMBER": "101",
        "CHANNEL(linkedid)": "1700000000.1",
        "CDR(start,u)": f"{started_at:.6f}",
        "CDR(billsec,f)": "42.300000",
        "CRM_ROUTE_STATUS": "OWNER",
        "CRM_OWNER_ID": "u1001",
        "CRM_MODULE": "Leads",
        "CRM_RECORD_ID": "L-1001",
        "CRM_EXTENSION": "101",
        "CRM_CALLER_NAME": "Marta Ruiz",
    }

def stdio_headers(caller: str = "+34928000000", script: str = "/usr/local/bin/crmroute-agi") -> bytes:
    """The header block Asterisk gives a process AGI: no ``agi_network`` lines, the
    script path as the request, the script name (``route``) as the first argument."""
    headers = [(k, v) for k, v in asterisk_headers(caller=caller) if k not in ("agi_network", "agi_network_script")]
    headers = [(k, script if k == "agi_request" else v) for k, v in headers]
    return header_block(headers + [("agi_arg_1", "route")])


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{key}: {value}\n" for key, value in headers).encode("utf-8") + b"\n"


def parse_args(line: str) -> list[str]:
    """Asterisk's ``parse_args`` (res/res_agi.c), character for character."""
    argv: list[list[str]] = []
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                argv.append([])
                whitespace = False
            escaped = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            argv.append([])
            whitespace = False
        argv[-1].append(ch)
        escaped = False
    return ["".join(chars) for chars in argv]


def separate_args(data: str, delim: str, arraylen: int, remove_chars: bool = True) -> list[str]:
    """Asterisk's ``__ast_app_separate_args`` (main/app.c), character for character.

    This is how an application splits its data (``AST_STANDARD_APP_ARGS`` is
    ``delim=","``, ``remove_chars=True``): ``"`` toggles quoting and, like
    ``\\``, is removed; a backslash makes the next character literal; ``(``/``)``
    and ``[``/``]`` nest, and the counters carry over from one argument to the
    next. The last of ``arraylen`` slots gets the rest of the text unparsed.
    """
    args: list[str] = []
    i, n = 0, len(data)
    paren = quote = bracket = 0
    ended_on_delim = False
    while i < n and len(args) < arraylen - 1:
        arg: list[str] = []
        ended_on_delim = False
        while i < n:
            ch = data[i]
            if ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(0, paren - 1)
            elif ch == "[":
                bracket += 1
            elif ch == "]":
                bracket = max(0, bracket - 1)
            elif ch == '"' and delim != '"':
                quote ^= 1
                if remove_chars:
                    i += 1
                    continue
            elif ch == "\\":
                if i + 1 >= n:
                    # C steps past the terminating NUL here: undefined behaviour.
                    raise ValueError("a trailing backslash makes Asterisk read past the end of the data")
                if remove_chars:
                    arg.append(data[i + 1])
                else:
                    arg += (ch, data[i + 1])
                i += 2
                continue
            elif ch == delim and not paren and not quote and not bracket:
                i += 1
                ended_on_delim = True
                break
            arg.append(ch)
            i += 1
        args.append("".join(arg))
    if i < n or ended_on_delim:
        args.append(data[i:])
    return args


def mset(data: str) -> dict[str, str]:
    """What ``MSet(data)`` sets (``pbx_builtin_setvar_multiple``): up to 99 pairs, the 99th unparsed;
    each pair split on its first ``=``, the value taken as is. Pairs without ``=`` are ignored."""
    variables = {}
    for pair in separate_args(data, ",", 99):
        parts = separate_args(pair, "=", 2)
        if len(parts) == 2:
            variables[parts[0]] = parts[1]
    return variables


def set_app(data: str) -> dict[str, str]:
    """What ``Set(data)`` sets (``pbx_builtin_setvar``): split on the first ``=``, the rest as is."""
    name, sep, value = data.partition("=")
    return {name: value} if sep else {}


def is_true(value: str | None) -> bool:
    """Asterisk's ``ast_true``."""
    return (value or "").strip().lower() in ("yes", "true", "y", "t", "1", "on")


def substitutions(data: str) -> list[str]:
    """The ``${...}`` and ``$[...]`` expressions Asterisk's variable substitution would evaluate."""
    found = []
    i = 0
    while (i := data.find("$", i)) >= 0:
        if data[i + 1 : i + 2] in ("{", "["):
            opening = data[i + 1]
            closing = "}" if opening == "{" else "]"
            depth, j = 1, i + 2
            while j < len(data) and depth:
                depth += {opening: 1, closing: -1}.get(data[j], 0)
                j += 1
            found.append(data[i:j])
            i = j
        else:
            i += 1
    return found


@dataclass
class CallResult:
    """What the PBX saw during one AGI session."""

    variables: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)  # each command, as parsed arguments
    raw: bytes = b""  # every byte the server wrote
    closed_by_server: bool = False
    # The server dropped the connection with a reset (abort() with our bytes unread): how a
    # refused peer is let go. Whether the peer sees a reset or an end of file then depends on
    # the event loop (uvloop reports the reset, asyncio often an end of file): both are the
    # same to Asterisk, which ends the AGI either way.
    reset_by_server: bool = False
    # (loop time, "command" or "reply", the line): when each command arrived and each reply left.
    timeline: list[tuple[float, str, str]] = field(default_factory=list)

    # Expressions a real PBX would have evaluated inside EXEC data (AGIEXECFULL=yes).
    evaluated: list[str] = field(default_factory=list)
    # Every variable set, in order, whichever command set it (SET VARIABLE, EXEC MSet, EXEC Set).
    assignments: list[tuple[str, str]] = field(default_factory=list)

    def assign(self, variables: dict[str, str]) -> None:
        self.variables.update(variables)
        self.assignments.extend(variables.items())


class AsteriskPeer:
    """Plays Asterisk for one call.

    ``device_states`` answers ``${DEVICE_STATE(PJSIP/101)}`` and
    ``extension_states`` ``${EXTENSION_STATE(101@ctx)}``; both say ``UNKNOWN``
    for what they do not list, as Asterisk does. ``state_delay`` slows only
    those answers (a PBX under load), ``state_delays`` the answer about one
    device (``{"PJSIP/103": 2.0}``, instead of ``state_delay``), ``reply_delay``
    every answer. With ``state_gate`` (an :class:`asyncio.Event`) state answers
    wait until it is set; :attr:`state_asked` is set once a state question came.
    """

    def __init__(
        self,
        *,
        device_states: dict[str, str] | None = None,
        extension_states: dict[str, str] | None = None,
        state_delay: float = 0.0,
        hangup_before_command: int | None = None,
        dead_channel_rejects: bool = True,
        reply_delay: float = 0.0,
        channel_variables: dict[str, str] | None = None,
        state_delays: dict[str, float] | None = None,
        state_gate: asyncio.Event | None = None,
    ):
        self.device_states = device_states or {}
        self.extension_states = extension_states or {}
        self.state_delay = state_delay
        self.state_delays = state_delays or {}
        self.state_gate = state_gate
        self.state_asked = asyncio.Event()
        # Send "HANGUP" before replying to the N-th command (0 = right after the headers).
        self.hangup_before_command = hangup_before_command
        self.dead_channel_rejects = dead_channel_rejects
        self.reply_delay = reply_delay
        self.channel_variables = dict(channel_variables or {})
        self.dead = False

    async def call(
        self,
        port: int,
        headers: list[tuple[str, str]],
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ) -> CallResult:
        """One session with the server at ``host:port`` (or over ``connection``, already open)."""
        reader, writer = connection or await asyncio.open_connection(host, port)
        result = CallResult(variables=dict(self.channel_variables))
        try:
            writer.write(header_block(headers))
            if self.hangup_before_command == 0:
                writer.write(b"HANGUP\n")
                self.dead = True
            await writer.drain()
            await asyncio.wait_for(self._serve(reader, writer, result), timeout)
        except ConnectionResetError:
            result.reset_by_server = result.closed_by_server = True
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        return result

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, result: CallResult) -> None:
        pending = b""
        count = 0
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                result.closed_by_server = True
                # Asterisk writes HANGUP once more at the end, even to a closed socket.
                try:
                    writer.write(b"HANGUP\n")
                except (ConnectionError, OSError):
                    pass
                return
            result.raw += chunk
            pending += chunk
            for line in chunk.decode("utf-8", "replace").splitlines():
                result.timeline.append((loop.time(), "command", line))
            for command in self._take_commands(pending):
                pending = pending[len(command):]
                count += 1
                if self.hangup_before_command is not None and count == self.hangup_before_command and not self.dead:
                    writer.write(b"HANGUP\n")
                    self.dead = True
                if self.reply_delay:
                    await asyncio.sleep(self.reply_delay)
                argv = parse_args(command.rstrip(b"\n").decode("utf-8", "replace"))
                if is_state_query(argv):
                    self.state_asked.set()
                    if self.state_gate is not None:
                        await self.state_gate.wait()
                    delay = next((d for device, d in self.state_delays.items() if f"({device})" in argv[3]), self.state_delay)
                    if delay:
                        await asyncio.sleep(delay)
                result.commands.append(argv)
                reply = self.reply(argv, result)
                result.timeline.append((loop.time(), "reply", reply))
                try:
                    writer.write(reply.encode("utf-8") + b"\n")
                    await writer.drain()
                except (ConnectionError, OSError):
                    # The server closed as soon as it had sent its last command:
                    # Asterisk ran the command, its reply is lost, nothing more happens.
                    result.closed_by_server = True
                    return

    @staticmethod
    def _take_commands(pending: bytes) -> list[bytes]:
        """Cut ``pending`` into what fgets would return: lines, or 2047-byte pieces."""
        out = []
        while pending:
            newline = pending.find(b"\n")
            if newline < 0:
                if len(pending) >= AGI_BUF_LEN - 1:
                    out.append(pending[: AGI_BUF_LEN - 1])
                    pending = pending[AGI_BUF_LEN - 1 :]
                    continue
                break
            piece = pending[: min(newline + 1, AGI_BUF_LEN - 1)]
            out.append(piece)
            pending = pending[len(piece) :]
        return out

    def reply(self, argv: list[str], result: CallResult) -> str:
        words = [a.upper() for a in argv[:3]]
        if words[:2] == ["SET", "VARIABLE"]:
            if len(argv) != 4:
                return USAGE_REPLY
            result.assign({argv[2]: argv[3]})
            return "200 result=1"
        if words[:2] == ["GET", "VARIABLE"]:
            if len(argv) != 3:
                return USAGE_REPLY
            value = result.variables.get(argv[2])
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if words[:3] == ["GET", "FULL", "VARIABLE"]:
            if len(argv) not in (4, 5):
                return USAGE_REPLY
            return f"200 result=1 ({self.evaluate(argv[3], result)})"
        if words[:1] == ["VERBOSE"]:
            return "200 result=1"
        if words[:1] == ["EXEC"]:
            return self.exec_app(argv, result)
        if self.dead and self.dead_channel_rejects:
            return "511 Command Not Permitted on a dead channel or intercept routine"
        return "510 Invalid or unknown command"

    def exec_app(self, argv: list[str], result: CallResult) -> str:
        """``EXEC app data``: res_agi's handle_exec. Works on a dead channel; always
        ``200 result=0`` for MSet/Set/NoOp, even with bad data; ``-2`` for an unknown app."""
        if len(argv) < 2:
            return USAGE_REPLY
        data = argv[2] if len(argv) > 2 else ""  # arguments after the data are ignored
        if is_true(result.variables.get("AGIEXECFULL")):
            for expression in substitutions(data):
                result.evaluated.append(expression)
                data = data.replace(expression, self.evaluate(expression, result), 1)
        app = argv[1].lower()
        if app == "mset":
            result.assign(mset(data))
        elif app == "set":
            result.assign(set_app(data))
        elif app != "noop":
            return "200 result=-2"
        return "200 result=0"

    def evaluate(self, expression: str, result: CallResult) -> str:
        """Substitute every ``${...}`` as Asterisk does, text around them kept.

        ``${NAME}`` and functions (``${CDR(start,u)}``, ``${CHANNEL(linkedid)}``)
        come from the channel's variables, keyed by the name as written;
        ``${DEVICE_STATE(PJSIP/101)}`` from ``device_states``,
        ``${EXTENSION_STATE(101@ctx)}`` from ``extension_states``; anything
        unknown is empty. ``${X:offset:length}`` cuts bytes, as Asterisk does.
        """
        return _REFERENCE.sub(lambda match: self._reference(match.group(1), result), expression)

    def _reference(self, inner: str, result: CallResult) -> str:
        close = inner.find(")") if "(" in inner else -1
        split_at = inner.find(":", close + 1) if close >= 0 else inner.find(":")
        name, cut = (inner, "") if split_at < 0 else (inner[:split_at], inner[split_at + 1 :])
        for function, states in (("DEVICE_STATE(", self.device_states), ("EXTENSION_STATE(", self.extension_states)):
            if name.startswith(function) and name.endswith(")"):
                value = states.get(name[len(function) : -1], "UNKNOWN")
                break
        else:
            value = result.variables.get(name, "")
        if not cut:
            return value
        offset, _, length = cut.partition(":")
        data = value.encode("utf-8")[int(offset or 0) :]
        if length:
            data = data[: int(length)]
        return data.decode("utf-8", "replace")


def contract_commands(result: CallResult) -> list[list[str]]:
    """The commands after the device-state questions: how the contract was set."""
    return [argv for argv in result.commands if not is_state_query(argv)]


def is_state_query(argv: list[str]) -> bool:
    """``GET FULL VARIABLE ${DEVICE_STATE(...)}`` or ``${EXTENSION_STATE(...)}``."""
    return [a.upper() for a in argv[:3]] == ["GET", "FULL", "VARIABLE"] and len(argv) > 3 and "_STATE(" in argv[3]


async def route_call(port: int, peer: AsteriskPeer | None = None, **header_args) -> CallResult:
    """One call through ``route`` with Asterisk-like headers."""
    return await (peer or AsteriskPeer()).call(port, asterisk_headers(**header_args))

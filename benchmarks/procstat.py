"""What a process costs, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """``rss`` now and ``hwm`` (the peak RSS), in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values["rss" if key == "VmRSS" else "hwm"] = int(value.split()[0])
    return values


def pinning(cpu: int | None):
    """A ``preexec_fn`` for :mod:`subprocess` that pins the child to ``cpu`` (None: no pinning)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def pin(pid: int, cpu: int | None) -> bool:
    """Pin ``pid`` to one CPU; False where that is not possible (then figures are noisier)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        return False
    return True


def listening(port: int) -> bool:
    """True when a TCP socket listens on ``port`` (``/proc/net/tcp``, state 0A)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[1].endswith(wanted) and fields[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def reap(proc) -> tuple[float, int]:
    """Wait for the child ``proc`` (a :class:`subprocess.Popen`) to end: its CPU seconds
    and peak RSS in KiB (``wait4``). Sets ``proc.returncode``."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss

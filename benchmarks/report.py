"""Plain-text tables for the terminal."""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable


def format_table(title: str, headers: list[str], rows: list[list[object]]) -> str:
    """``title`` over a left-aligned first column and right-aligned figures."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) if cells else len(headers[i]) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        first, rest = values[0].ljust(widths[0]), [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * max(len(line(row)) for row in [headers, *cells])
    head = [line(headers), rule] if any(headers) else []
    return "\n".join([title, rule, *head, *(line(row) for row in cells), rule])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of ``samples`` (seconds) in milliseconds, by nearest rank."""
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)
    last = len(ordered) - 1

    def rank(share: float) -> float:
        return ordered[min(last, int(share * len(ordered)))] * 1000

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": ordered[-1] * 1000}


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    """p50 (the median), max and min of ``values`` (milliseconds), rounded; {} for none."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"p50": round(statistics.median(ordered), digits), "max": round(ordered[-1], digits), "min": round(ordered[0], digits)}


def standalone(
    doc: str | None,
    add_options: Callable[[argparse.ArgumentParser], None],
    defaults: Callable[[argparse.Namespace], None],
    run: Callable[[argparse.Namespace], Any],
    table: Callable[[Any], str],
    argv: list[str] | None = None,
) -> int:
    """One benchmark module run alone: its own options and ``--quick``, its report printed as its table.

    ``run.py`` runs the same modules together through the same four functions.
    """
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    add_options(parser)
    options = parser.parse_args(argv)
    defaults(options)
    print(table(run(options)))
    return 0

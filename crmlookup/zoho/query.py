"""Zoho's two query languages, written safely: search ``criteria`` and COQL.

Values come from our own normalisation (phone forms) or from call records;
either way every character with a meaning in the language is escaped, so a
value can never change the query around it.
"""

from __future__ import annotations

import re
from typing import Sequence

# Zoho's criteria search takes at most 10 conditions.
MAX_CRITERIA = 10
_CRITERIA_SPECIAL = re.compile(r"([\\(),])")


def criteria_value(value: str) -> str:
    """A value inside ``(field:equals:value)``: backslash, parentheses and commas escaped."""
    return _CRITERIA_SPECIAL.sub(r"\\\1", value)


def criteria_any_of(fields: Sequence[str], values: Sequence[str]) -> str:
    """``((A:in:x,y)or(B:in:x,y))``: any of ``fields`` holds any of ``values`` (at most 10 fields)."""
    if not fields or len(fields) > MAX_CRITERIA:
        raise ValueError(f"a criteria search takes 1 to {MAX_CRITERIA} fields, got {len(fields)}")
    listed = ",".join(criteria_value(value) for value in values)
    conditions = [f"({name}:in:{listed})" for name in fields]
    return conditions[0] if len(conditions) == 1 else "(" + "or".join(conditions) + ")"


def coql_text(value: str) -> str:
    """A COQL string literal: ``'...'`` with quotes and backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def coql_any_of(columns: Sequence[str], values: Sequence[str]) -> str:
    """``((A in ('x','y')) or (B in ('x','y')))``: COQL wants every pair of conditions bracketed."""
    if not columns:
        raise ValueError("no columns")
    listed = ", ".join(coql_text(value) for value in values)
    expression = f"({columns[0]} in ({listed}))"
    for column in columns[1:]:
        expression = f"({expression} or ({column} in ({listed})))"
    return expression

"""Business hours: when an owner or a team takes calls, in their own time zone.

A schedule is written as lines like ``"mon-fri 09:00-18:00"``: days (``mon``,
``mon-fri``, ``sat,sun``, ``daily``) and a span of local time. A span that ends
at or before it starts runs past midnight (``"fri 22:00-02:00"`` ends on
Saturday morning). Everything is parsed once, when the configuration loads;
asking whether a schedule is open is a few comparisons.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, UTC
from typing import Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
# How far next_open looks: a year of closed dates and a week past them.
MAX_DAYS_AHEAD = 366 + 7

_LINE = re.compile(r"\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*")

# (start, end) minutes since local midnight, end exclusive, for each weekday (0 = Monday).
Week = tuple[tuple[tuple[int, int], ...], ...]


class BusinessHours:
    """A weekly schedule in one time zone, with closed dates (holidays)."""

    def __init__(self, name: str, zone: ZoneInfo, week: Week, closed_dates: frozenset[date]):
        self.name = name
        self.zone = zone
        self._week = week
        self._closed = closed_dates

    @classmethod
    def parse(cls, name: str, time_zone: str, lines: Iterable[str], closed_dates: Iterable[str]) -> BusinessHours:
        """Build a schedule; raises ValueError naming the key (``open[1]``, ``time_zone``...)."""
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone: {time_zone!r} is not a known time zone (e.g. Europe/Madrid, America/New_York, UTC)") from None
        spans: list[list[tuple[int, int]]] = [[] for _ in DAYS]
        for index, line in enumerate(lines):
            try:
                days, start, end = _parse_line(line)
            except ValueError as exc:
                raise ValueError(f"open[{index}]: {exc}") from None
            for day in days:
                if end > start:
                    spans[day].append((start, end))
                else:  # past midnight: the rest of this day, then the start of the next
                    spans[day].append((start, MINUTES_PER_DAY))
                    if end:
                        spans[(day + 1) % 7].append((0, end))
        closed = set()
        for index, text in enumerate(closed_dates):
            try:
                closed.add(date.fromisoformat(text))
            except ValueError:
                raise ValueError(f"closed_dates[{index}]: {text!r} is not a date like 2025-12-25") from None
        week = tuple(tuple(sorted(day)) for day in spans)
        return cls(name, zone, week, frozenset(closed))

    def is_open(self, at: datetime) -> bool:
        """True when ``at`` (an aware datetime) falls inside the schedule."""
        local = at.astimezone(self.zone)
        if local.date() in self._closed:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self._week[local.weekday()])

    def next_open(self, at: datetime) -> datetime | None:
        """``at`` if the schedule is open then, else when it next opens (in its zone);
        None for a schedule that never opens (within a year and a week)."""
        local = at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        day = local.date()
        for offset in range(MAX_DAYS_AHEAD):
            if day not in self._closed:
                for start, end in self._week[day.weekday()]:
                    if offset == 0 and end <= minute:
                        continue
                    if offset == 0 and start <= minute:
                        return at
                    return datetime(day.year, day.month, day.day, start // 60, start % 60, tzinfo=self.zone)
            day += timedelta(days=1)
        return None

    def __repr__(self) -> str:
        return f"BusinessHours({self.name!r}, {self.zone.key})"


def utc_now() -> datetime:
    """The current time, aware, in UTC: the router's default clock."""
    return datetime.now(UTC)


def _parse_line(line: str) -> tuple[list[int], int, int]:
    match = _LINE.fullmatch(line.lower())
    if match is None:
        raise ValueError(f"{line!r} is not like 'mon-fri 09:00-18:00'")
    start, end = _minutes(match["start"], line), _minutes(match["end"], line)
    if start == end:
        raise ValueError(f"{line!r}: the span is empty (use 00:00-24:00 for a whole day)")
    if start == MINUTES_PER_DAY:
        raise ValueError(f"{line!r}: a span cannot start at 24:00")
    return _days(match["days"], line), start, end


def _minutes(text: str, line: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{line!r}: {text} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, line: str) -> list[int]:
    if text == "daily":
        return list(range(7))
    days: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{line!r}: {part!r} is not a day or day range ({', '.join(DAYS)}, daily)")
        a = DAYS.index(first)
        b = DAYS.index(last) if last else a
        days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))  # fri-mon wraps over the weekend
    return sorted(set(days))

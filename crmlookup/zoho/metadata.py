"""Org metadata a lookup needs, fetched rarely: which deal stages are open, who the active users are.

Both are kept for a configured time, fetched by one caller while the others
wait, and, when a refetch fails, the previous copy goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, TypeVar

from ..errors import CrmBadResponse, CrmError
from ..extensions import NotAnExtensionList, split_extensions
from .api import ZohoApi
from .http import clip
from .records import record_id, text

__all__ = ["ActiveUser", "ActiveUsers", "DealStages", "Kept", "NotAnExtensionList", "parse_extensions"]

logger = logging.getLogger("crmroute.zoho")

T = TypeVar("T")

# A stage missing from the table triggers a refetch, but not more often than this.
MIN_REFETCH_S = 60.0
# Users are read 200 a page; an org has far fewer pages than this.
MAX_USER_PAGES = 50

# Several extensions in the Users field are separated by whitespace, commas or semicolons.
USER_FIELD_SEPARATORS = r"\s,;"


def parse_extensions(text: str) -> tuple[str, ...]:
    """The extensions a Users extension field holds: ``101``, ``101, 102``, ``101;102 103``.

    Raises :class:`NotAnExtensionList` for a value that is not a clean list of
    extensions (``PJSIP/105``, ``Local/999@default``): split on ``/`` or ``@``
    it would ring extensions nobody meant.
    """
    return split_extensions(text, USER_FIELD_SEPARATORS)


class Kept(Generic[T]):
    """A value loaded on demand and kept for ``ttl_s``; one load at a time; the old copy on failure."""

    def __init__(self, load: Callable[[list[str] | None], Awaitable[T]], ttl_s: float, what: str, clock: Callable[[], float] = time.monotonic):
        self._load = load
        self._ttl_s = ttl_s
        self._what = what
        self._clock = clock
        self._value: T | None = None
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def age(self) -> float:
        return self._clock() - self._loaded_at

    async def get(self, trace: list[str] | None, *, max_age: float | None = None) -> T:
        limit = self._ttl_s if max_age is None else min(max_age, self._ttl_s)
        if self._value is not None and self.age < limit:
            return self._value
        async with self._lock:
            if self._value is not None and self.age < limit:
                return self._value
            try:
                self._value = await self._load(trace)
            except CrmError as exc:
                if self._value is None:
                    raise
                if trace is not None:
                    trace.append(f"{self._what}: refetch failed ({exc}); using the copy from {self.age:.0f} s ago")
                return self._value
            self._loaded_at = self._clock()
            return self._value


@dataclass(frozen=True)
class StageTable:
    """Deal stage -> forecast type (``Open``, ``Closed Won``, ``Closed Lost``), per pipeline."""

    by_pipeline: dict[str, dict[str, str]] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)

    def forecast_type(self, stage: str, pipeline: str) -> str | None:
        stages = self.by_pipeline.get(pipeline.casefold())
        if stages is not None and stage.casefold() in stages:
            return stages[stage.casefold()]
        return self.merged.get(stage.casefold())


class DealStages:
    """Whether a deal's stage is open, by the pipeline settings (stages are customised, names prove nothing)."""

    def __init__(self, api: ZohoApi, layout_ids: tuple[str, ...], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._api = api
        self._layout_ids = layout_ids
        self._table = Kept(self._load, ttl_s, "deal stages", clock)

    async def table(self, trace: list[str] | None, *, fresh: bool = False) -> StageTable:
        """The whole stage table (read again first when ``fresh``)."""
        return await self._table.get(trace, max_age=0 if fresh else None)

    async def forecast_type(self, stage: str, pipeline: str, trace: list[str] | None) -> str | None:
        """``Open``, ``Closed Won``... for ``stage``; ``None`` if no pipeline knows it, even after a refetch."""
        table = await self._table.get(trace)
        found = table.forecast_type(stage, pipeline)
        if found is None and self._table.age >= MIN_REFETCH_S:
            table = await self._table.get(trace, max_age=0)  # a stage added since we read the table?
            found = table.forecast_type(stage, pipeline)
        return found

    async def _load(self, trace: list[str] | None) -> StageTable:
        layout_ids = self._layout_ids or await self._deal_layouts(trace)
        by_pipeline: dict[str, dict[str, str]] = {}
        merged: dict[str, str] = {}
        for layout_id in layout_ids:
            body = await self._api.get("/settings/pipeline", {"layout_id": layout_id}, trace, purpose="metadata")
            pipelines = (body or {}).get("pipeline", [])
            if not isinstance(pipelines, list):
                raise CrmBadResponse("pipeline settings: 'pipeline' is not a list")
            for pipeline in pipelines:
                stages = _stages_of(pipeline)
                for key in ("display_value", "actual_value"):
                    name = pipeline.get(key)
                    if isinstance(name, str) and name:
                        by_pipeline.setdefault(name.casefold(), {}).update(stages)
                for stage, forecast in stages.items():
                    merged.setdefault(stage, forecast)
        if trace is not None:
            trace.append(f"deal stages: {len(merged)} stage(s) in {len(by_pipeline)} pipeline name(s); open: {sorted(s for s, f in merged.items() if f == 'open') or 'none'}")
        return StageTable(by_pipeline, merged)

    async def _deal_layouts(self, trace: list[str] | None) -> tuple[str, ...]:
        body = await self._api.get("/settings/layouts", {"module": "Deals"}, trace, purpose="metadata")
        layouts = (body or {}).get("layouts", [])
        if not isinstance(layouts, list) or not all(isinstance(layout, dict) for layout in layouts):
            raise CrmBadResponse("Deals layouts: 'layouts' is not a list")
        return tuple(record_id(layout, "Deals layout") for layout in layouts)


def _stages_of(pipeline: Any) -> dict[str, str]:
    """``{stage (casefolded): forecast type (casefolded)}`` from one pipeline's ``maps``."""
    if not isinstance(pipeline, dict) or not isinstance(pipeline.get("maps"), list):
        raise CrmBadResponse("pipeline settings: a pipeline without a 'maps' list")
    stages: dict[str, str] = {}
    for stage in pipeline["maps"]:
        if not isinstance(stage, dict) or not isinstance(stage.get("forecast_type"), str):
            raise CrmBadResponse("pipeline settings: a stage without a forecast_type")
        for key in ("display_value", "actual_value"):
            name = stage.get(key)
            if isinstance(name, str) and name:
                stages[name.casefold()] = stage["forecast_type"].casefold()
    return stages


@dataclass(frozen=True)
class ActiveUser:
    id: str
    name: str
    email: str
    extensions: tuple[str, ...]


class ActiveUsers:
    """The org's active users and the extension(s) in a custom field of theirs."""

    def __init__(self, api: ZohoApi, extension_field: str, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self._api = api
        self._field = extension_field
        self._users = Kept(self._load, ttl_s, "active users", clock)
        # The field value each user was warned about: one warning per bad value, not one per reload.
        self.warned: dict[str, str] = {}

    async def get(self, user_id: str, trace: list[str] | None) -> ActiveUser | None:
        """The active user ``user_id``; ``None`` when inactive or unknown."""
        return (await self._users.get(trace)).get(user_id)

    async def all(self, trace: list[str] | None) -> list[ActiveUser]:
        """Every active user."""
        return list((await self._users.get(trace)).values())

    async def _load(self, trace: list[str] | None) -> dict[str, ActiveUser]:
        users: dict[str, ActiveUser] = {}
        for page in range(1, MAX_USER_PAGES + 1):
            body = await self._api.get("/users", {"type": "ActiveUsers", "page": str(page), "per_page": "200"}, trace, purpose="metadata")
            if body is None:
                break
            listed = users_of(body)
            for user in listed:
                user_id = record_id(user, "user")
                users[user_id] = ActiveUser(user_id, text(user, "full_name", "user"), text(user, "email", "user"), user_extensions(user, self._field, self.warned, trace))
            info = body.get("info")
            if not (isinstance(info, dict) and info.get("more_records") is True):
                break
        if trace is not None:
            with_extension = sum(1 for user in users.values() if user.extensions)
            trace.append(f"active users: {len(users)}, {with_extension} with {clip(self._field, 40)}")
        return users


def users_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``users`` list of a users answer."""
    listed = body.get("users")
    if not isinstance(listed, list) or not all(isinstance(user, dict) for user in listed):
        raise CrmBadResponse("users: 'users' is not a list of users")
    return listed


def user_extensions(user: dict[str, Any], field: str, warned: dict[str, str], trace: list[str] | None = None) -> tuple[str, ...]:
    """The extension(s) in the user's ``field`` (none without a field, or for a value that is
    not a clean list: warned once per value, ``warned`` remembering each user's)."""
    if not field:
        return ()
    user_id = str(user.get("id"))
    value = text(user, field, f"user {user_id}")
    try:
        return parse_extensions(value)
    except NotAnExtensionList as exc:
        if warned.get(user_id) != value:
            warned[user_id] = value
            logger.warning(
                "Zoho user %s (%s): %s %s, so no extension of theirs is used; write extensions only, e.g. 101 or 101, 102",
                user_id, clip(text(user, "full_name", "user"), 60), clip(field, 40), exc,
            )
        if trace is not None:
            trace.append(f"user {user_id}: {clip(field, 40)} refused: {exc}")
        return ()

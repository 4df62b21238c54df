"""Routing policies, compiled once per configuration.

:class:`PolicyBook` checks the whole ``[routing]`` section (names that refer to
each other, extensions against the pattern, DIDs listed twice) and turns it
into :class:`Policy` objects: patterns compiled, time zones loaded, candidates
for the team and the senior manager built. Routing a call then only looks
things up. Every error is a ValueError that names its key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from crmlookup.phone import MAX_NUMBER_LENGTH, InvalidNumber, normalise
from crmlookup.records import MODULES, Owner

from .availability import DEVICE_STATES, StateTemplate
from .candidates import Candidate, senior_manager_candidate, team_candidate
from .hours import BusinessHours
from .rewrite import NumberRewrite
from .policy_settings import FALLBACK_STEPS, LAST_AGENT, POLICY_KEYS, TICKETS, owner_key
from .targets import DialTargets

if TYPE_CHECKING:
    from .settings import RoutingSettings

# What a CRM record kind in ``lookup_order`` may be called; which kinds exist
# is the CRM plugin's to say (checked where the configuration is read).
RECORD_KIND = re.compile(r"[A-Z][A-Za-z0-9_]{0,63}")
DEFAULT_POLICY = "default"
MAX_RESOLVED_DIDS = 1024
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Staff:
    """Who answers on which extensions, and when: the maps every policy shares."""

    extensions: Mapping[str, tuple[str, ...]]  # owner key -> extensions
    users_by_extension: Mapping[str, frozenset[str]]  # extension -> owner keys mapped to it
    hours: Mapping[str, BusinessHours]  # owner key -> schedule
    # Zoho Desk department (id, or name folded to lower case) -> the team its unassigned tickets ring.
    department_teams: Mapping[str, Candidate] = field(default_factory=dict)

    def team_for(self, departments: tuple[str, ...]) -> Candidate | None:
        """The team configured for the first of ``departments`` (a ticket's department id, then its name) that has one."""
        for department in departments:
            team = self.department_teams.get(department) or self.department_teams.get(department.casefold())
            if team is not None:
                return team
        return None

    def key_for(self, owner: Owner) -> str:
        """The key ``owner`` is configured under (id first, then email), else its id."""
        if owner.id in self.extensions or owner.id in self.hours:
            return owner.id
        email = owner_key(owner.email) if owner.email else ""
        if email and (email in self.extensions or email in self.hours):
            return email
        return owner.id

    def users_on(self, extensions: tuple[str, ...] | list[str]) -> frozenset[str]:
        """Everyone the config maps to any of ``extensions``."""
        users: set[str] = set()
        for extension in extensions:
            users |= self.users_by_extension.get(extension, frozenset())
        return frozenset(users)


@dataclass(frozen=True)
class Policy:
    """Everything a call on one DID is routed with."""

    name: str
    rules: tuple[str, ...]  # lookup order: CRM modules and LastAgent
    modules: tuple[str, ...]  # the CRM modules among them, asked of the backend
    targets: DialTargets
    states: StateTemplate | None  # None: availability is not checked
    skip_states: frozenset[str]
    on_unavailable: tuple[str, ...]
    on_unmapped: tuple[str, ...]
    team: Candidate | None
    senior_manager: Candidate | None
    last_agent_max_age_s: int
    staff: Staff
    rewrite: NumberRewrite = NumberRewrite()
    # The schedule of everyone without one of their own; None: always open.
    hours: BusinessHours | None = None

    @property
    def uses_last_agent(self) -> bool:
        return LAST_AGENT in self.rules

    @property
    def uses_tickets(self) -> bool:
        return TICKETS in self.rules


class PolicyBook:
    """The policy for each DID, and the default for the rest."""

    def __init__(self, default: Policy, by_did: dict[str, Policy], by_e164: dict[str, Policy], region: str):
        self.default = default
        self._by_did = by_did
        self._by_e164 = by_e164
        self._region = region
        # DIDs seen in another form, resolved once: parsing a number costs
        # about 100 us, and a PBX dials few distinct DIDs. Bounded, so a
        # stream of made-up DIDs cannot grow it.
        self._resolved: dict[str, Policy] = {}

    def for_did(self, did: str) -> Policy:
        """The policy listing ``did`` (as written, or as the same E.164 number), else the default."""
        did = did.strip()
        policy = self._by_did.get(did) or self._resolved.get(did)
        if policy is not None:
            return policy
        if not self._by_e164 or not did:
            return self.default
        try:
            policy = self._by_e164.get(normalise(did, self._region).e164, self.default)
        except InvalidNumber:
            policy = self.default
        if len(did) <= MAX_NUMBER_LENGTH and len(self._resolved) < MAX_RESOLVED_DIDS:
            self._resolved[did] = policy
        return policy

    @classmethod
    def build(cls, settings: RoutingSettings) -> PolicyBook:
        """Check and compile ``settings``; raises ValueError naming the key."""
        try:
            re.compile(settings.extension_pattern)
        except re.error as exc:
            raise ValueError(f"extension_pattern is not a valid regular expression: {exc}") from None
        valid = DialTargets(settings.dial_template, settings.extension_pattern)
        hours = {}
        for name, schedule in settings.hours.items():
            _check_name(name, f"hours.{name}")
            hours[name] = _keyed(f"hours.{name}", functools.partial(schedule.compile, name))
        staff = _staff(settings, valid, hours)
        teams = {}
        department_teams: dict[str, Candidate] = {}
        for name, team in settings.teams.items():
            _check_name(name, f"teams.{name}")
            where = f"teams.{name}."
            if not team.extensions:
                raise ValueError(f"{where}extensions: a team needs at least one extension")
            _check_extensions(valid, team.extensions, f"{where}extensions")
            teams[name] = team_candidate(name, team.extensions, _schedule(hours, team.hours, f"{where}hours"))
            _add_departments(department_teams, team.departments, teams[name], f"{where}departments")
        staff = replace(staff, department_teams=department_teams)
        default = _compile(DEFAULT_POLICY, {key: getattr(settings, key) for key in POLICY_KEYS}, "", settings, staff, teams, hours)
        by_did: dict[str, Policy] = {}
        by_e164: dict[str, Policy] = {}
        for name, overrides in settings.policies.items():
            _check_name(name, f"policies.{name}")
            if name == DEFAULT_POLICY:
                raise ValueError(f"policies.{name}: the name {DEFAULT_POLICY!r} means the [routing] keys themselves")
            where = f"policies.{name}."
            values = {key: getattr(settings, key) if getattr(overrides, key) is None else getattr(overrides, key) for key in POLICY_KEYS}
            policy = _compile(name, values, where, settings, staff, teams, hours)
            if not overrides.dids:
                raise ValueError(f"{where}dids: a policy needs at least one DID")
            for index, did in enumerate(overrides.dids):
                _add_did(by_did, by_e164, did.strip(), policy, f"{where}dids[{index}]", settings.default_region)
        return cls(default, by_did, by_e164, settings.default_region)


def _compile(
    name: str, values: dict[str, Any], where: str, settings: RoutingSettings, staff: Staff, teams: dict[str, Candidate], hours: dict[str, BusinessHours]
) -> Policy:
    rules = _rules(values["lookup_order"], where)
    targets = _keyed(where.rstrip("."), lambda: DialTargets(values["dial_template"], settings.extension_pattern))
    states = None
    if values["check_availability"]:
        template = values["state_template"]
        states = _keyed(
            f"{where}state_template",
            lambda: StateTemplate(template) if template else StateTemplate.for_dial_template(values["dial_template"]),
        )
    for state in values["skip_states"]:
        if state.upper() not in DEVICE_STATES:
            raise ValueError(f"{where}skip_states: {state!r} is not one of {', '.join(DEVICE_STATES)}")
    for key in ("on_unavailable", "on_unmapped"):
        _check_steps(values[key], f"{where}{key}")
    if not 60 <= values["last_agent_max_age_s"] <= 10 * 365 * 86400:
        raise ValueError(f"{where}last_agent_max_age_s must be between 60 and 315360000 (ten years)")
    rewrite = _keyed(where.rstrip("."), lambda: NumberRewrite.build(tuple(values["strip_prefixes"]), values["add_prefix"]))
    return Policy(
        name=name,
        rules=rules,
        modules=tuple(rule for rule in rules if rule not in (LAST_AGENT, TICKETS)),
        targets=targets,
        states=states,
        skip_states=frozenset(state.upper() for state in values["skip_states"]),
        on_unavailable=tuple(values["on_unavailable"]),
        on_unmapped=tuple(values["on_unmapped"]),
        team=_team(values["team"], teams, where),
        senior_manager=_senior_manager(values["senior_manager"], staff, where),
        last_agent_max_age_s=values["last_agent_max_age_s"],
        staff=staff,
        rewrite=rewrite,
        hours=_schedule(hours, values["business_hours"], f"{where}business_hours"),
    )


def _rules(lookup_order: tuple[str, ...], where: str) -> tuple[str, ...]:
    rules = tuple(lookup_order)
    if not rules:
        raise ValueError(f"{where}lookup_order must name at least one rule")
    for rule in rules:
        if rule not in (LAST_AGENT, TICKETS) and not RECORD_KIND.fullmatch(rule):
            raise ValueError(f"{where}lookup_order: {rule!r} is neither {LAST_AGENT} nor a CRM record kind such as {', '.join(MODULES)}")
    if len(set(rules)) != len(rules):
        raise ValueError(f"{where}lookup_order: a rule is listed twice")
    return rules


def _add_departments(department_teams: dict[str, Candidate], departments: tuple[str, ...], team: Candidate, where: str) -> None:
    """Key ``team`` by each Desk department it takes (names folded, so "Support" is "support")."""
    for index, department in enumerate(departments):
        key = department.strip().casefold()
        if not key:
            raise ValueError(f"{where}[{index}]: a department cannot be empty")
        other = department_teams.get(key)
        if other is not None and other is not team:
            raise ValueError(f"{where}[{index}]: department {department!r} is already taken by {other.label}")
        department_teams[key] = team


def _check_steps(steps: tuple[str, ...], where: str) -> None:
    for step in steps:
        if step not in FALLBACK_STEPS:
            raise ValueError(f"{where}: {step!r} is not one of {', '.join(FALLBACK_STEPS)}")
    if len(set(steps)) != len(steps):
        raise ValueError(f"{where}: a step is listed twice")


def _team(name: str, teams: dict[str, Candidate], where: str) -> Candidate | None:
    if not name:
        return None
    if name not in teams:
        raise ValueError(f"{where}team: no team {name!r} in [routing.teams] (known: {', '.join(sorted(teams)) or 'none'})")
    return teams[name]


def _senior_manager(name: str, staff: Staff, where: str) -> Candidate | None:
    if not name:
        return None
    key = owner_key(name)
    if key not in staff.extensions:
        raise ValueError(f"{where}senior_manager: {name!r} has no extensions in [routing.owner_extensions]")
    return senior_manager_candidate(key, staff.extensions[key], staff.hours.get(key))


def _staff(settings: RoutingSettings, valid: DialTargets, hours: dict[str, BusinessHours]) -> Staff:
    users_by_extension: dict[str, set[str]] = {}
    for key, extensions in settings.owner_extensions.items():
        _check_extensions(valid, extensions, f"owner_extensions.{key}")
        for extension in extensions:
            users_by_extension.setdefault(extension, set()).add(key)
    owner_hours = {key: _schedule(hours, name, f"owner_hours.{key}") for key, name in settings.owner_hours.items()}
    return Staff(
        extensions=dict(settings.owner_extensions),
        users_by_extension={ext: frozenset(keys) for ext, keys in users_by_extension.items()},
        hours={key: schedule for key, schedule in owner_hours.items() if schedule is not None},
    )


def _check_extensions(valid: DialTargets, extensions: tuple[str, ...], where: str) -> None:
    for index, extension in enumerate(extensions):
        if not valid.is_valid(extension):
            raise ValueError(f"{where}[{index}]: {extension!r} does not match extension_pattern (or holds characters a dial string cannot)")


def _schedule(hours: dict[str, BusinessHours], name: str, where: str) -> BusinessHours | None:
    if not name:
        return None
    if name not in hours:
        raise ValueError(f"{where}: no schedule {name!r} in [routing.hours] (known: {', '.join(sorted(hours)) or 'none'})")
    return hours[name]


def _add_did(by_did: dict[str, Policy], by_e164: dict[str, Policy], did: str, policy: Policy, where: str, region: str) -> None:
    if not did:
        raise ValueError(f"{where}: a DID cannot be empty")
    if did in by_did:
        raise ValueError(f"{where}: DID {did!r} is already listed by policy {by_did[did].name!r}")
    by_did[did] = policy
    try:
        e164 = normalise(did, region).e164
    except InvalidNumber:
        return  # a short internal number: matched as written only
    other = by_e164.get(e164)
    if other is not None and other is not policy:
        raise ValueError(f"{where}: DID {did!r} is the number {e164}, already listed by policy {other.name!r}")
    by_e164[e164] = policy


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: names may hold letters, digits, _ and - only")


_Built = TypeVar("_Built")


def _keyed(where: str, build: Callable[[], _Built]) -> _Built:
    """Run ``build``, prefixing a ValueError with the key it is about."""
    try:
        return build()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}" if where else str(exc)) from None


def unknown_rule(settings: RoutingSettings, modules: tuple[str, ...]) -> str:
    """The first ``lookup_order`` rule (of ``[routing]`` or a policy) that is neither
    LastAgent nor one of the CRM's record kinds ``modules``: the problem, or ""."""
    allowed = (*modules, LAST_AGENT, TICKETS)
    orders = [("", settings.lookup_order)]
    orders += [(f"policies.{name}.", policy.lookup_order or ()) for name, policy in settings.policies.items()]
    for where, rules in orders:
        for rule in rules:
            if rule not in allowed:
                return f"{where}lookup_order: {rule!r} is not one of {', '.join(allowed)}"
    return ""

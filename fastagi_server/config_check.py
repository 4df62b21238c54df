"""``crmroute check-config``: every problem of a configuration, and what it would do.

Reading a file stops at nothing: each bad key is listed (see
:func:`~.config.config_problems`). A file that loads is then opened as the
server would open it (the backend, the routing policy), without creating
anything: the outbox is only looked for, and the CRM's users are read to warn
about configured owners no CRM user has. ``--online`` also asks the CRM's
plugin to prove the credentials with one cheap request and to check the names
the configuration gives it (Zoho's ``user_extension_field``, retailCRM's
methods and store): any failure to reach the CRM is then a problem, not a
warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from crmlookup.errors import CrmAuthError, CrmError
from crmlookup.factory import live_backend
from crmlookup.records import Owner
from dialplan.outbox.settings import STORE_URL_ENV

from .app import App
from .config import Config, ConfigError
from .event_loop import loop_factory


@dataclass
class CheckReport:
    """What opening a configuration found: problems fail the check, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    outbox: str = ""


class UnreadHistory:
    """The call history for a check: the LastAgent rule is satisfied, the outbox file left alone."""

    async def last_answered_extension(self, caller_e164: str, max_age_s: float) -> str | None:
        return None


def store_location(config: Config) -> tuple[str, str]:
    """``(description, problem)`` of the outbox: the shared store ``[store]`` names
    (connected to, its schema made if need be), else the file ``outbox.path``."""
    if not (config.store.url or config.store.url_file or os.environ.get(STORE_URL_ENV)):
        return outbox_location(config.outbox.resolved_path)
    from dialplan.outbox import OutboxError, open_store

    try:
        store = open_store(config.outbox.resolved_path, config.store)
    except OutboxError as exc:
        return "", str(exc)
    store.close()
    return store.path, ""


def outbox_location(path: Path) -> tuple[str, str]:
    """``(description, problem)`` of the outbox at ``path``, without creating it."""
    if path.exists():
        from dialplan.outbox import Outbox, OutboxError

        try:
            Outbox.open(path, create=False).close()
        except OutboxError as exc:
            return "", f"outbox.path: {exc}"
        return str(path), ""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return "", f"outbox.path: cannot create {path}: {ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return "", f"outbox.path: cannot create {path}: {ancestor} is not writable by this user"
    return f"{path} (not there yet: created with the first call outcome)", ""


def recordings_warnings(config: Config) -> list[str]:
    """What keeps call recordings from reaching the CRM, as far as this user can tell (a
    dialplan that records nothing needs none of it, so these are warnings)."""
    settings = config.recordings
    folder = Path(settings.directory)
    if not folder.is_dir() and settings == type(settings)():
        return []  # no [recordings] set up and no Asterisk here: nothing is recorded on this host
    if not folder.is_dir():
        return [f"recordings.directory: {folder} is not a directory here; recordings named by CRM_RECORDING cannot be read"]
    if not os.access(folder, os.R_OK | os.X_OK):
        return [f"recordings.directory: {folder} is not readable by this user; recordings cannot be sent to the CRM"]
    if settings.delete_after_upload and not os.access(folder, os.W_OK):
        return [f"recordings.delete_after_upload: {folder} is not writable by this user; uploaded recordings stay"]
    return []


async def _check_online(app: App, report: CheckReport) -> None:
    """The plugin's own online check: one cheap request, and the names it must know."""
    plugin = app.config.plugin
    try:
        report.problems += await plugin.check_online(live_backend(app.backend), app.config.settings_of(plugin))
    except CrmAuthError as exc:
        report.problems.append(f"the CRM refused our credentials: {exc}")
    except CrmError as exc:
        report.problems.append(f"could not reach the CRM ({plugin.name}): {exc}")


async def _check_desk(app: App, report: CheckReport) -> None:
    """Zoho Desk, when a policy uses the Tickets rule: the credentials and org id work (one
    request), and every department a team names is one of the portal's."""
    if app.tickets is None:
        return
    from crmlookup.zoho_desk.backend import ZohoDeskBackend

    desk = live_backend(app.tickets)
    if not isinstance(desk, ZohoDeskBackend):
        return
    try:
        departments = await desk.departments()
    except CrmAuthError as exc:
        report.problems.append(f"Zoho Desk refused our credentials (or zoho_desk.org_id): {exc}")
        return
    except CrmError as exc:
        report.problems.append(f"could not reach Zoho Desk: {exc}")
        return
    known = {name.casefold() for name in departments.values()} | set(departments)
    for team, settings in app.config.routing.teams.items():
        for department in settings.departments:
            if department.strip().casefold() not in known and department.strip() not in known:
                report.warnings.append(f"routing.teams.{team}.departments: {department!r} is no department of the Zoho Desk portal")


async def _users(app: App, report: CheckReport, online: bool) -> list[Owner] | None:
    """The CRM's users, to check the configured owners against; None when they could not be read."""
    try:
        return list(await app.writer.users())
    except CrmAuthError as exc:
        report.problems.append(f"the CRM refused our credentials: {exc}")
    except CrmError as exc:
        if online:
            report.problems.append(f"could not read the CRM's users: {exc}")
        else:
            report.warnings.append(f"could not read the CRM's users, so owner_extensions is not checked against them: {exc}")
    return None


def unknown_owner_keys(config: Config, users: list[Owner]) -> list[str]:
    """The ``owner_extensions`` and ``owner_hours`` keys no CRM user has (by id, or email)."""
    ids = {user.id for user in users}
    emails = {user.email.lower() for user in users if user.email}
    keys = dict.fromkeys([*config.routing.owner_extensions, *config.routing.owner_hours])
    return [key for key in keys if key not in (emails if "@" in key else ids)]


async def inspect(config: Config, *, online: bool = False) -> CheckReport:
    """Open what ``config`` names, as the server would, and report on it (``online``: and ask the CRM)."""
    report = CheckReport()
    try:
        loop_factory(config.server.event_loop)
    except ConfigError as exc:
        report.problems.append(str(exc))
    report.outbox, problem = store_location(config)
    if problem:
        report.problems.append(problem)
    report.warnings += recordings_warnings(config)
    app = App.from_config(config, history=UnreadHistory())
    try:
        before = len(report.problems)
        if online:
            await _check_online(app, report)
            await _check_desk(app, report)
        # A CRM that just failed its own check is not asked again.
        users = await _users(app, report, online) if len(report.problems) == before else None
    finally:
        await app.aclose()  # the writer with it
    if users is not None:
        for key in unknown_owner_keys(config, users):
            report.warnings.append(
                f"routing: {key!r} is configured (owner_extensions or owner_hours) but no CRM user has this "
                f"{'email' if '@' in key else 'id'}; it never matches a record's owner"
            )
    return report

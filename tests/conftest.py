"""Shared test helpers: a real FastAGI server on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fastagi_server.app import App
from fastagi_server.config import Config, config_from_dict
from fastagi_server.server import FastAgiServer

if TYPE_CHECKING:
    from zoho_simulator import ZohoSimulator


# The event loop the in-process tests run on: "asyncio" (the default) or "uvloop"
# (CRMROUTE_TEST_EVENT_LOOP=uvloop, with `pip install -e '.[test,fast]'`; .ci/run runs the
# suite once each way). Servers started as processes (`crmroute serve`) pick theirs
# from server.event_loop, "auto" by default: uvloop whenever it is installed.
TEST_EVENT_LOOP = os.environ.get("CRMROUTE_TEST_EVENT_LOOP", "asyncio")


def pytest_configure(config: pytest.Config) -> None:
    if TEST_EVENT_LOOP == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif TEST_EVENT_LOOP != "asyncio":
        raise pytest.UsageError(f"CRMROUTE_TEST_EVENT_LOOP must be asyncio or uvloop, got {TEST_EVENT_LOOP!r}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {TEST_EVENT_LOOP} (CRMROUTE_TEST_EVENT_LOOP)"


def make_config(data: dict[str, Any] | None = None) -> Config:
    """A Config from a TOML-shaped dict (the defaults for the rest)."""
    return config_from_dict(data or {})


@contextlib.asynccontextmanager
async def agi_server(config: Config | None = None, app: App | None = None, routes=None) -> AsyncIterator[FastAgiServer]:
    """A started server on 127.0.0.1 and a free port; shut down on exit."""
    server = FastAgiServer(app or App.from_config(config or Config()), routes=routes)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(grace_ms=1000)


def run(coro):
    """Run one scenario on a fresh event loop."""
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def no_system_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default configuration file is one the test controls (absent unless it writes it),
    never the machine's /etc/crmroute/crmroute.toml."""
    from fastagi_server import config

    path = tmp_path_factory.mktemp("etc") / "crmroute.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    return path


@pytest.fixture(autouse=True)
def private_state_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default outbox lands in a temporary directory, never in the user's home."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    return state


@pytest.fixture
def call_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures the per-call log lines."""
    caplog.set_level(logging.INFO, logger="crmroute")
    return caplog


def session_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "crmroute.call"]


@pytest.fixture
def zoho():
    """A Zoho CRM simulator on a free loopback port, with an empty org (tests add users and records)."""
    from zoho_simulator import ZohoSimulator

    with ZohoSimulator() as simulator:
        yield simulator


def zoho_config(
    simulator,
    *,
    routing: dict[str, Any] | None = None,
    zoho: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    mirror: dict[str, Any] | None = None,
) -> Config:
    """A Config whose backend is the simulator (region ES unless ``routing`` says otherwise).

    The mirror is off unless ``mirror`` is given: these tests are about the live lookup.
    """
    return make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES", **(routing or {})},
        "zoho": simulator.zoho_config(**(zoho or {})),
        "cache": cache or {},
        "mirror": mirror if mirror is not None else {"enabled": False},
    })


def zoho_toml(simulator: ZohoSimulator, *, routing: str = "", zoho: str = "", rest: str = "") -> str:
    """The text of a crmroute.toml whose backend is the simulator (region ES), for tests that
    run crmroute as a process and so need a file, not a Config. ``routing`` and ``zoho`` are
    TOML lines added to those sections (``routing`` may end in its subtables), ``rest`` the
    sections after them."""
    return f"""
[crm]
backend = "zoho"
[routing]
default_region = "ES"
{routing}
[zoho]
accounts_url = "{simulator.url}"
client_id = "{simulator.client_id}"
client_secret = "{simulator.client_secret}"
refresh_token = "{simulator.refresh_token}"
{zoho}
{rest}"""


async def decide(app: App, caller: str):
    """The routing decision for one call from ``caller``."""
    from dialplan import InboundCall

    return await app.router.decide(InboundCall(caller=caller))


def decision_of(config: Config, caller: str) -> Any:
    """The router's decision (with its steps) for one call, from a fresh App closed after it."""

    async def scenario() -> Any:
        app = App.from_config(config)
        try:
            return await decide(app, caller)
        finally:
            await app.aclose()

    return asyncio.run(scenario())


def routed_variables(config: Config, caller: str, *, prepare: Callable[[App], Awaitable[Any]] | None = None) -> dict[str, str]:
    """Route one call over TCP through a fresh App and server; the CRM_* variables, every one the
    dialplan contract names among them. ``prepare`` is awaited with the App before the call."""
    from asterisk_peer import CallResult, route_call
    from dialplan import CONTRACT_VARIABLES

    async def scenario() -> CallResult:
        app = App.from_config(config)
        if prepare is not None:
            await prepare(app)
        async with agi_server(app=app) as server:
            return await route_call(server.port, caller=caller)

    variables: dict[str, str] = asyncio.run(scenario()).variables
    assert all(name in variables for name in CONTRACT_VARIABLES)
    return variables


@pytest.fixture
def retailcrm():
    """A retailCRM simulator on a free loopback port, with an empty account (tests add users and customers).

    Its rate limit leaves room for tests that route a few calls in a row; the
    tests about the limit lower it.
    """
    from retailcrm_simulator import RetailCrmSimulator

    with RetailCrmSimulator(rate_limit_per_s=100) as simulator:
        yield simulator


def retailcrm_config(simulator, *, routing: dict[str, Any] | None = None, retailcrm: dict[str, Any] | None = None, **sections: Any) -> Config:
    """A Config whose backend is the retailCRM simulator (region RU unless ``routing`` says otherwise)."""
    return make_config({
        "crm": {"backend": "retailcrm"},
        "routing": {"default_region": "RU", **(routing or {})},
        "retailcrm": simulator.retailcrm_config(**(retailcrm or {})),
        **sections,
    })

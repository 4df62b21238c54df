"""The lookup cache in front of the CRM: single-flight, stale on error, the deadline, bounds.

Against the Zoho simulator over real HTTP (and the real local directory), so
every "request" counted here is one the CRM really received.
"""

import asyncio
import time

import pytest

from asterisk_peer import route_call
from conftest import agi_server, decide, make_config, run, zoho_config
from crmlookup.cache import CachedBackend
from crmlookup.circuit import CircuitBreaker
from crmlookup.local_directory import LocalDirectory
from crmlookup.phone import normalise
from crmlookup.settings import CacheSettings
from fastagi_server.app import App
from fastagi_server.config import ConfigError, config_from_dict

CALLER = "+34928000000"


@pytest.fixture
def org(zoho):
    ana = zoho.add_user("Ana García", "ana@example.com", Extension="101")
    zoho.add_record("Leads", ana, Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="928 00 00 00", Lead_Status="New")
    return zoho


def app_for(simulator, **config):
    zoho = {"user_extension_field": "Extension", **config.pop("zoho", {})}
    return App.from_config(zoho_config(simulator, zoho=zoho, **config))


def sent_requests(app):
    """Requests our Zoho client has sent so far (counted as they leave, not as Zoho answers)."""
    return sum(app.backend.inner.api.sent.values())


async def wait_for_lookups(app, timeout=15.0):
    """Until no lookup is running in the background (a late answer being stored)."""
    backend = app.backend
    deadline = time.monotonic() + timeout
    while backend._flights and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not backend._flights, "a lookup is still running"


# -- single-flight ----------------------------------------------------------

def test_100_concurrent_calls_from_one_number_cost_the_requests_of_one(org):
    async def one_call():
        async with agi_server(zoho_config(org, zoho={"user_extension_field": "Extension"})) as server:
            return await route_call(server.port, caller=CALLER)

    async def burst():
        org.latency_s = 0.2  # the calls really overlap
        async with agi_server(zoho_config(org, zoho={"user_extension_field": "Extension"})) as server:
            return await asyncio.gather(*(route_call(server.port, caller=CALLER) for _ in range(100)))

    single = run(one_call())
    one_call_requests = [(r.method, r.path, r.raw_query) for r in org.log]
    org.reset_log()
    results = run(burst())

    assert single.variables["CRM_TARGET"] == "PJSIP/101"
    assert [r.variables["CRM_TARGET"] for r in results] == ["PJSIP/101"] * 100
    # The same again, but for the token: the second server found it in the shared token file.
    assert one_call_requests[0][:2] == ("POST", "/oauth/v2/token")
    assert sorted((r.method, r.path, r.raw_query) for r in org.log) == sorted(one_call_requests[1:])
    assert len(one_call_requests) == 6  # token; Leads, Contacts, Accounts searches and the deals' COQL, at once; users


def test_single_flight_is_per_number(org):
    async def scenario(app):
        numbers = [f"+3492811{i:04d}" for i in range(10)]
        await asyncio.gather(*(decide(app, n) for n in numbers for _ in range(5)))
        return app.backend.lookups_started

    app = app_for(org)
    started = run(_closing(app, scenario))

    assert started == 10
    assert len([r for r in org.api_requests() if r.path.endswith("/search")]) == 10 * 3, "one search per module and number"


async def _closing(app, scenario):
    try:
        return await scenario(app)
    finally:
        await app.aclose()


# -- fresh, negative and stale entries ----------------------------------------

def test_a_second_call_is_answered_from_the_cache(org):
    async def scenario(app):
        return await decide(app, CALLER), await decide(app, "928000000"), await decide(app, "+34928999999"), await decide(app, "928999999")

    first, second, unknown, unknown_again = run(_closing(app_for(org), scenario))

    assert (first.from_cache, second.from_cache) == (False, True)
    assert second.target == "PJSIP/101"
    assert unknown.status.value == unknown_again.status.value == "NOMATCH"
    assert unknown_again.from_cache, "an unknown caller is remembered too (for negative_ttl_s)"
    assert any(step.startswith("cache: fresh entry for +34928000000") for step in second.steps)


def test_fresh_answers_only_from_a_fresh_entry_and_never_asks_the_backend():
    """``fresh`` is what lets the router skip its deadline timer: it must never
    wait, never start a lookup, and say the same as ``lookup`` would."""
    now = [1000.0]
    settings = CacheSettings(ttl_s=60, negative_ttl_s=60, stale_ttl_s=600)
    cache = CachedBackend(LocalDirectory.open(None), settings, stale_wait_s=1.0, clock=lambda: now[0])
    number, modules = normalise(CALLER, "ES"), ("Leads", "Deals", "Contacts", "Accounts")

    async def scenario():
        try:
            before = cache.fresh(number, modules)
            looked_up = await cache.lookup(number, modules)
            now[0] += 30
            fresh = cache.fresh(number, modules)
            other_order = cache.fresh(number, ("Contacts",))
            now[0] += 31  # expired (still stale-servable): the backend must be asked again
            expired = cache.fresh(number, modules)
            return before, looked_up, fresh, other_order, expired
        finally:
            await cache.aclose()

    before, looked_up, fresh, other_order, expired = run(scenario())
    assert before is None and other_order is None and expired is None
    assert cache.lookups_started == 1
    assert fresh.from_cache and fresh.matches == looked_up.matches and fresh.matches
    assert fresh.steps == [f"cache: fresh entry for {number.e164} (stored 30 s ago)"]


def test_429_backs_off_and_serves_the_stale_entry(org):
    async def scenario(app):
        first = await decide(app, CALLER)
        org.add_fault(r"^/crm/", 429)
        before = sent_requests(app)
        rate_limited = await decide(app, CALLER)
        after_429 = sent_requests(app)
        backing_off = await decide(app, CALLER)
        return first, rate_limited, backing_off, before, after_429, sent_requests(app)

    first, rate_limited, backing_off, before, after_429, at_end = run(_closing(app_for(org, cache={"ttl_s": 0}), scenario))

    assert first.target == rate_limited.target == backing_off.target == "PJSIP/101"
    assert (first.from_cache, rate_limited.from_cache, backing_off.from_cache) == (False, True, True)
    assert before < after_429 <= before + 4, "one lookup's requests (sent at once) met the 429"
    assert at_end == after_429, "while backing off, Zoho is not called at all"
    assert any("TOO_MANY_REQUESTS" in step for step in rate_limited.steps)
    assert any("not calling Zoho" in step for step in backing_off.steps)


def test_429_with_nothing_cached_is_error_and_the_next_call_does_not_hammer(org):
    org.add_fault(r"^/crm/", 429)

    async def scenario(app):
        return [await decide(app, f"+3492800000{i}") for i in range(5)]

    decisions = run(_closing(app_for(org), scenario))

    assert [d.status.value for d in decisions] == ["ERROR"] * 5
    assert len(org.api_requests()) <= 4, "the first lookup's round trip at most, then nothing while backing off"


def test_crm_down_serves_the_stale_entry_or_error_within_the_deadline(org):
    async def scenario(app):
        await decide(app, CALLER)
        org.stop()  # connection refused from now on
        started = time.perf_counter()
        stale = await decide(app, CALLER)
        unknown = await decide(app, "+34928123456")
        return stale, unknown, time.perf_counter() - started

    stale, unknown, elapsed = run(_closing(app_for(org, cache={"ttl_s": 0}, routing={"deadline_ms": 1000}), scenario))

    assert (stale.status.value, stale.target, stale.from_cache) == ("OWNER", "PJSIP/101", True)
    assert unknown.status.value == "ERROR"
    assert elapsed < 2 * 1.0


def test_a_slow_crm_gives_timeout_within_the_deadline_and_the_late_answer_fills_the_cache(org):
    deadline_ms = 400
    caller = "+34928777777"
    org.add_record("Leads", org.add_user("Bea", "bea@example.com"), Full_Name="Slow", Last_Name="S", Phone=caller, Lead_Status="New")
    org.latency_s = 5.0  # one search request: the number is stored as the first form searched
    routing = {"deadline_ms": deadline_ms, "owner_extensions": {"bea@example.com": ["101"]}}

    async def scenario():
        async with agi_server(zoho_config(org, routing=routing)) as server:
            started = time.perf_counter()
            slow = await route_call(server.port, caller=caller)
            answered_in = time.perf_counter() - started
            await wait_for_lookups(server.app)
            sent = sent_requests(server.app)
            again = await route_call(server.port, caller=caller)
            return slow.variables, answered_in, again.variables, sent, sent_requests(server.app)

    slow, answered_in, again, after_lookup, at_end = run(scenario())

    assert slow["CRM_ROUTE_STATUS"] == "TIMEOUT"
    assert int(slow["CRM_LOOKUP_MS"]) < deadline_ms + 1000  # the deadline, not the 5 s answer (room for a busy machine)
    assert answered_in < deadline_ms / 1000 + 1.0  # the whole AGI exchange, with room for a slow machine
    assert (again["CRM_ROUTE_STATUS"], again["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
    assert at_end == after_lookup, "the next call was served from the cache"


def test_an_expired_entry_is_served_when_the_crm_is_slow_and_refreshed_behind(org):
    async def scenario(app):
        await decide(app, CALLER)
        org.latency_s = 1.0
        started = time.perf_counter()
        stale = await decide(app, CALLER)
        waited = time.perf_counter() - started
        await wait_for_lookups(app)
        return stale, waited

    app = app_for(org, cache={"ttl_s": 0, "stale_wait_ms": 200}, routing={"deadline_ms": 1500})
    stale, waited = run(_closing(app, scenario))

    assert (stale.status.value, stale.from_cache) == ("OWNER", True)
    assert 0.15 < waited < 0.9
    assert any("no answer in 200 ms" in step and "refresh continues" in step for step in stale.steps)
    assert app.backend.lookups_started == 2


def test_stale_wait_is_capped_below_the_deadline(org):
    app = app_for(org, cache={"stale_wait_ms": 60_000}, routing={"deadline_ms": 500})
    try:
        assert app.backend._stale_wait_s == pytest.approx(0.35)
    finally:
        run(app.aclose())


def test_the_refresh_sees_changes_after_the_ttl(org):
    async def scenario(app):
        first = await decide(app, CALLER)
        lead = org.records("Leads")[0]
        beatriz = org.add_user("Beatriz Soto", "beatriz@example.com", Extension="102")
        org.add_record("Leads", beatriz, id=lead["id"], Full_Name="Marta Ruiz", Last_Name="Ruiz", Phone="928 00 00 00", Lead_Status="New")
        return first, await decide(app, CALLER)

    first, second = run(_closing(app_for(org, cache={"ttl_s": 0}, zoho={"users_ttl_s": 0}), scenario))

    assert (first.target, second.target) == ("PJSIP/101", "PJSIP/102")
    assert not second.from_cache


def test_a_lookup_running_past_refresh_timeout_is_abandoned(org):
    org.latency_s = 2.0

    d = run(_closing(app_for(org, cache={"refresh_timeout_ms": 200}, routing={"deadline_ms": 3000}), lambda app: decide(app, CALLER)))

    assert d.status.value == "ERROR"
    assert "abandoned" in d.reason


def test_the_cache_is_bounded(org):
    async def scenario(app):
        for caller in ("+34928000000", "+34928000001", "+34928000002"):
            await decide(app, caller)
        return await decide(app, "+34928000000")

    again = run(_closing(app_for(org, cache={"max_entries": 2}), scenario))

    assert not again.from_cache, "the least recently used entry was dropped"


def test_closing_the_app_stops_lookups_in_flight(org):
    org.latency_s = 3.0

    async def scenario():
        app = app_for(org, routing={"deadline_ms": 100})
        decision = await decide(app, CALLER)
        started = time.perf_counter()
        await app.aclose()
        return decision, time.perf_counter() - started

    decision, closing = run(scenario())

    assert decision.status.value == "TIMEOUT"
    assert closing < 1.0


# -- any backend -----------------------------------------------------------------

def test_the_local_directory_is_cached_too():
    async def scenario():
        app = App.from_config(make_config({"routing": {"default_region": "ES"}}))
        try:
            return await decide(app, "+34928000000"), await decide(app, "+34928000000")
        finally:
            await app.aclose()

    first, second = run(scenario())

    assert first.target == second.target == "PJSIP/101"
    assert (first.from_cache, second.from_cache) == (False, True)


def test_cache_and_backend_in_one_process_share_nothing_between_apps():
    """Each configured app (a SIGHUP reload builds a new one) has its own cache."""
    settings = CacheSettings()

    async def scenario():
        backends = [CachedBackend(LocalDirectory.open(None), settings, stale_wait_s=0.5) for _ in range(2)]
        number = normalise("+34928000000", "ES")
        first = await backends[0].lookup(number, ("Leads",))
        other = await backends[1].lookup(number, ("Leads",))
        for backend in backends:
            await backend.aclose()
        return first, other

    first, other = run(scenario())
    assert not first.from_cache and not other.from_cache


@pytest.mark.parametrize(
    "section, message",
    [
        ({"ttl_s": -1}, "cache: ttl_s must be between 0 and 604800, got -1"),
        ({"max_entries": 0}, "cache: max_entries must be between 1"),
        ({"stale_wait_ms": "1s"}, "cache.stale_wait_ms: expected an integer"),
        ({"enabled": False}, "cache.enabled: unknown key"),
    ],
)
def test_cache_settings_are_validated_with_the_key_named(section, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"cache": section})
    assert message in str(caught.value)


# -- the circuit breaker (its own clock) -------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_a_run_of_failures_and_reopens_on_the_next_one():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, open_s=30, backoff_initial_s=1, backoff_max_s=60, clock=clock)
    breaker.record_failure("500")
    breaker.record_failure("500")
    assert not breaker.is_open
    breaker.record_failure("timeout")
    assert breaker.retry_in() == 30 and "3 failures in a row, last: timeout" in breaker.reason
    clock.now += 31
    assert not breaker.is_open
    breaker.record_failure("500")
    assert breaker.is_open, "half-open: one more failure reopens it"
    clock.now += 31
    breaker.record_success()
    breaker.record_failure("500")
    assert not breaker.is_open


def test_breaker_backs_off_exponentially_on_429_and_honours_retry_after():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=5, open_s=30, backoff_initial_s=1, backoff_max_s=8, clock=clock)
    assert [breaker.record_rate_limited() for _ in range(5)] == [1, 2, 4, 8, 8]
    breaker.record_success()
    assert breaker.record_rate_limited(retry_after_s=5) == 5


def test_a_run_of_server_errors_opens_the_breaker(org):
    org.add_fault(r"^/crm/", 503)

    async def scenario(app):
        decisions = []
        for i in range(4):
            decisions.append(await decide(app, f"+3492800000{i}"))
            # A decision past its deadline leaves its searches running: let their failures come
            # back, so what is counted is the breaker's doing, not how busy the machine is.
            await wait_for_lookups(app)
        sent = sent_requests(app)  # counted as they leave: one still on its way to Zoho is counted
        decisions += [await decide(app, f"+3492800001{i}") for i in range(4)]
        return decisions, sent, sent_requests(app)

    # A deadline no busy machine reaches: each decision waits for Zoho's 503s (ERROR), never TIMEOUT.
    app = app_for(org, zoho={"breaker_failures": 3}, routing={"deadline_ms": 30_000})
    decisions, sent, at_end = run(_closing(app, scenario))

    assert [d.status.value for d in decisions] == ["ERROR"] * 8
    assert 3 <= sent <= 2 * 4, "the failures it takes: at most two lookups' searches"
    assert at_end == sent, "once open, no request leaves"
    assert "failures in a row" in decisions[-1].reason

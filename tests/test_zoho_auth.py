"""OAuth2 against the simulator's accounts server: refresh once, never race, never leak."""

import asyncio
import json
import logging
import time

import pytest
from click.testing import CliRunner

from conftest import decide, make_config, run, zoho_config
from crmlookup.errors import CrmAuthError
from crmlookup.secrets import Secret, read_secret
from crmlookup.zoho import ZohoBackend, ZohoSettings
from fastagi_server.app import App
from fastagi_server.cli import cli
from fastagi_server.config import ConfigError, config_from_dict

NUMBERS = [f"+3492800{i:04d}" for i in range(20)]


@pytest.fixture
def org(zoho):
    owner = zoho.add_user("Ana García", "ana@example.com", Extension="101")
    for number in NUMBERS:
        zoho.add_record("Leads", owner, Full_Name=f"Lead {number}", Last_Name="L", Phone=number, Lead_Status="New")
    return zoho


def with_app(simulator, scenario, zoho=None, **config):
    async def wrapper():
        app = App.from_config(zoho_config(simulator, zoho={"user_extension_field": "Extension", **(zoho or {})}, **config))
        try:
            return await scenario(app)
        finally:
            await app.aclose()

    return run(wrapper())


def test_a_token_expiring_mid_run_is_refreshed_once_and_no_call_fails(org):
    async def scenario(app):
        first = await decide(app, NUMBERS[0])
        org.expire_tokens()  # Zoho ends the token before the hour it announced
        later = await asyncio.gather(*(decide(app, number) for number in NUMBERS[1:]))
        return [first, *later]

    decisions = with_app(org, scenario)

    assert [d.status.value for d in decisions] == ["OWNER"] * len(NUMBERS)
    assert len(org.token_requests()) == 2, "one token at start, one refresh for the whole burst"
    refused = [r for r in org.api_requests() if r.status == 401]
    assert 1 <= len(refused) <= 10, "only the requests already in flight with the old token were refused"


def test_the_announced_lifetime_is_honoured_before_zoho_refuses_it(org):
    org.token_ttl_s = 2  # the client renews a tenth of the life early

    async def scenario(app):
        first = await decide(app, NUMBERS[0])
        await asyncio.sleep(2.0)
        return first, await decide(app, NUMBERS[1])

    first, second = with_app(org, scenario)

    assert first.status.value == second.status.value == "OWNER"
    assert len(org.token_requests()) == 2
    assert not [r for r in org.api_requests() if r.status == 401]


def test_a_token_refused_twice_is_an_error_not_a_loop(org):
    org.add_fault(r"/Leads/search$", 401)  # every search: INVALID_TOKEN, even with a fresh token

    d = with_app(org, lambda app: decide(app, NUMBERS[0]))

    assert d.status.value == "ERROR"
    assert "INVALID_TOKEN" in d.reason
    assert len(org.token_requests()) == 2
    assert len(org.requests("/crm/v8/Leads/search")) == 2


def test_a_revoked_refresh_token_gives_error_and_the_accounts_server_is_left_alone(org):
    org.revoke_refresh_token()

    async def scenario(app):
        return [await decide(app, number) for number in NUMBERS[:5]]

    decisions = with_app(org, scenario)

    assert [d.status.value for d in decisions] == ["ERROR"] * 5
    assert "invalid_code" in decisions[0].reason
    assert len(org.token_requests()) == 1, "a refused refresh is not retried call after call"
    assert not org.api_requests()


def test_a_throttled_accounts_server_is_rate_limiting(org):
    org.max_tokens_per_window = 0

    d = with_app(org, lambda app: decide(app, NUMBERS[0]))

    assert d.status.value == "ERROR"
    assert "too many requests" in d.reason.lower()


def test_at_most_ten_tokens_are_minted_in_ten_minutes(org):
    org.max_tokens_per_window = 1000  # the limit is ours, not the simulator's

    async def scenario(app):
        decisions = []
        for number in NUMBERS[:12]:
            org.expire_tokens()
            decisions.append(await decide(app, number))
        return decisions

    decisions = with_app(org, scenario)

    assert len(org.token_requests()) == 10
    assert [d.status.value for d in decisions[:10]] == ["OWNER"] * 10
    assert decisions[11].status.value == "ERROR"
    assert "10 access tokens minted" in decisions[11].reason


def test_the_api_domain_of_the_token_answer_is_used(org):
    # The data centre default would be https://www.zohoapis.com: only the token's api_domain leads to the simulator.
    d = with_app(org, lambda app: decide(app, NUMBERS[0]))

    assert d.status.value == "OWNER"


# -- credentials --------------------------------------------------------------

def test_credentials_from_files_and_environment(org, tmp_path, monkeypatch):
    secret_file = tmp_path / "secret"
    secret_file.write_text(org.client_secret + "\n")
    monkeypatch.setenv("CRMROUTE_ZOHO_REFRESH_TOKEN", org.refresh_token)
    config = make_config({
        "crm": {"backend": "zoho"},
        "routing": {"default_region": "ES"},
        "zoho": {"accounts_url": org.url, "client_id": org.client_id, "client_secret_file": str(secret_file), "user_extension_field": "Extension"},
    })

    async def scenario():
        app = App.from_config(config)
        try:
            return await decide(app, NUMBERS[0])
        finally:
            await app.aclose()

    assert run(scenario()).status.value == "OWNER"


@pytest.mark.parametrize(
    "zoho, environ, message",
    [
        ({}, {}, "zoho.client_id is not set (set zoho.client_id, zoho.client_id_file or $CRMROUTE_ZOHO_CLIENT_ID)"),
        ({"client_id": "a", "client_id_file": "/nonexistent"}, {}, "zoho.client_id and zoho.client_id_file are both set"),
        ({"client_id": "a", "client_secret_file": "/nonexistent/secret"}, {}, "zoho.client_secret_file: cannot read /nonexistent/secret"),
        ({"client_id": "a", "client_secret": "b"}, {"CRMROUTE_ZOHO_REFRESH_TOKEN": "  "}, "zoho.refresh_token is not set"),
    ],
)
def test_missing_or_conflicting_credentials_name_the_key(zoho, environ, message):
    with pytest.raises(CrmAuthError) as caught:
        ZohoBackend.open(ZohoSettings(**zoho), environ=environ)
    assert message in str(caught.value)


def test_an_empty_credential_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(CrmAuthError, match="is empty"):
        read_secret("zoho.client_secret", "", str(empty), "X", {})


def test_zoho_settings_are_validated_with_the_key_named():
    for section, message in (
        ({"data_centre": "MARS"}, "zoho: data_centre 'MARS' is not one of US, EU, IN, AU, JP, CN, CA, SA"),
        ({"max_concurrency": 0}, "zoho: max_concurrency must be between 1 and 100, got 0"),
        ({"accounts_url": "ftp://x"}, "zoho: accounts_url 'ftp://x' must be a URL"),
        ({"closed_lead_statuses": "Junk Lead"}, None),  # a single string is a list of one
        ({"read_timeout_ms": "fast"}, "zoho.read_timeout_ms: expected an integer"),
        ({"client_secret_path": "x"}, "zoho.client_secret_path: unknown key"),
    ):
        if message is None:
            assert config_from_dict({"zoho": section}).zoho.closed_lead_statuses == ("Junk Lead",)
            continue
        with pytest.raises(ConfigError) as caught:
            config_from_dict({"zoho": section})
        assert message in str(caught.value)


@pytest.mark.parametrize("centre, accounts", [("eu", "https://accounts.zoho.eu"), ("CA", "https://accounts.zohocloud.ca"), ("SA", "https://accounts.zoho.sa"), ("AU", "https://accounts.zoho.com.au")])
def test_data_centres(centre, accounts):
    settings = config_from_dict({"zoho": {"data_centre": centre}}).zoho
    assert settings.accounts_server == accounts
    assert settings.default_api_domain.startswith("https://www.zohoapis.")


# -- secrets never show -------------------------------------------------------

def test_secrets_never_show_in_reprs_explain_json_or_logs(org, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text(
        '[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n[zoho]\n'
        + "".join(f'{key} = "{value}"\n' for key, value in org.zoho_config(user_extension_field="Extension").items())
    )
    runner = CliRunner()

    explain = runner.invoke(cli, ["lookup", NUMBERS[0], "--explain", "--config", str(config_file)])
    as_json = runner.invoke(cli, ["lookup", NUMBERS[1], "--json", "--config", str(config_file)])
    checked = runner.invoke(cli, ["check-config", str(config_file)])
    org.revoke_refresh_token()
    org.expire_tokens()
    failed = runner.invoke(cli, ["lookup", NUMBERS[2], "--explain", "--config", str(config_file)])

    assert explain.exit_code == 0, explain.output
    assert "POST /oauth/v2/token -> 200" in explain.output
    assert "GET /crm/v8/Leads/search?criteria=" in explain.output and "%2B3492800" in explain.output
    assert "mirror: not used (no mirror file at" in explain.output
    assert "cache: no entry" in explain.output
    assert json.loads(as_json.output)["variables"]["CRM_ROUTE_STATUS"] == "OWNER"
    assert checked.exit_code == 0 and "backend zoho" in checked.output
    assert "ERROR" in failed.output and "invalid_code" in failed.output
    config = config_from_dict({"zoho": org.zoho_config()})
    everything = "\n".join([
        explain.output, as_json.output, checked.output, failed.output,
        caplog.text, repr(config), str(config),
        repr(Secret(org.client_secret)), str(Secret(org.client_secret)),
    ])
    for secret in (org.client_secret, org.refresh_token, org.client_id, *org.tokens_issued):
        assert secret not in everything
    assert org.tokens_issued, "tokens were minted, and none of them showed"


def test_credentials_travel_in_the_form_body_not_the_url(org):
    with_app(org, lambda app: decide(app, NUMBERS[0]))

    (token_request,) = org.token_requests()
    assert token_request.method == "POST"
    assert token_request.raw_query == "", "a URL ends up in access logs"


def test_every_exchange_is_bounded_by_the_read_timeout(org):
    org.add_fault(r"/oauth/v2/token", 200, delay_s=2.0, body={"access_token": "x", "expires_in": 3600})

    started = time.perf_counter()
    d = with_app(org, lambda app: decide(app, NUMBERS[0]), zoho={"read_timeout_ms": 300}, routing={"deadline_ms": 5000})

    assert d.status.value == "ERROR"
    assert "no answer in time" in d.reason
    assert time.perf_counter() - started < 2.0


def test_processes_share_one_token_through_the_token_cache_file(org, tmp_path):
    token_file = tmp_path / "zoho-token.json"

    async def one_process(number):
        app = App.from_config(zoho_config(org, zoho={"user_extension_field": "Extension", "token_cache_file": str(token_file)}))
        try:
            return await decide(app, number)
        finally:
            await app.aclose()

    decisions = [run(one_process(number)) for number in NUMBERS[:4]]
    org.expire_tokens()
    after_expiry = run(one_process(NUMBERS[4]))
    then = run(one_process(NUMBERS[5]))

    assert [d.status.value for d in decisions + [after_expiry, then]] == ["OWNER"] * 6
    assert len(org.token_requests()) == 2, "one token for four processes; one refresh after Zoho refused it"
    assert any("from zoho.token_cache_file" in step for step in decisions[1].steps)
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert org.tokens_issued[-1] in token_file.read_text()


def test_a_damaged_token_cache_file_is_ignored(org, tmp_path):
    token_file = tmp_path / "zoho-token.json"
    token_file.write_text('{"access_token": 12, "expires_at": "soon"')

    d = with_app(org, lambda app: decide(app, NUMBERS[0]), zoho={"token_cache_file": str(token_file)})

    assert d.status.value == "OWNER"
    assert len(org.token_requests()) == 1


def test_classic_agi_processes_route_through_zoho_and_share_the_token(org, tmp_path):
    from test_stdio_agi import StdioAsterisk, stdio_headers

    config = tmp_path / "crmroute.toml"
    config.write_text(
        '[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n'
        f'[zoho]\naccounts_url = "{org.url}"\nuser_extension_field = "Extension"\ntoken_cache_file = "{tmp_path / "token.json"}"\n'
    )
    credentials = {
        "CRMROUTE_ZOHO_CLIENT_ID": org.client_id,
        "CRMROUTE_ZOHO_CLIENT_SECRET": org.client_secret,
        "CRMROUTE_ZOHO_REFRESH_TOKEN": org.refresh_token,
    }
    outcomes = []
    for number in NUMBERS[:2]:
        agi = StdioAsterisk([f"--config={config}", "route", "900"], env=credentials)
        agi.send(stdio_headers(caller=number))
        outcomes.append(agi.run_to_end())

    for result, code, stderr in outcomes:
        assert code == 0, stderr
        assert (result.variables["CRM_ROUTE_STATUS"], result.variables["CRM_TARGET"]) == ("OWNER", "PJSIP/101")
        assert org.client_secret not in stderr
    assert len(org.token_requests()) == 1


def test_every_command_shares_one_token_without_configuring_a_file(org, tmp_path, private_state_directory):
    """Each ``crmroute lookup`` is a process of its own: without a shared token, the
    eleventh run in ten minutes is refused by Zoho's mint limit (and then the server
    cannot mint either). The token is shared through the state directory by default."""
    config_file = tmp_path / "crmroute.toml"
    config_file.write_text(
        '[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n[zoho]\n'
        + "".join(f'{key} = "{value}"\n' for key, value in org.zoho_config().items())
    )
    runner = CliRunner()
    for _ in range(12):
        result = runner.invoke(cli, ["lookup", NUMBERS[0], "--config", str(config_file)])
        assert result.exit_code == 0, result.output
        assert "OWNER" in result.output
    assert len(org.token_requests()) == 1
    shared = private_state_directory / "crmroute" / "zoho-token.json"
    assert shared.stat().st_mode & 0o777 == 0o600
    assert shared.parent.stat().st_mode & 0o777 == 0o700


def test_a_token_file_that_cannot_be_made_costs_the_sharing_not_the_lookup(org, tmp_path):
    (tmp_path / "file").write_text("")
    d = with_app(org, lambda app: decide(app, NUMBERS[0]), zoho={"token_cache_file": str(tmp_path / "file" / "token.json")})
    assert d.status.value == "OWNER"


def test_a_shared_token_minted_for_other_credentials_is_not_used(tmp_path):
    """Every process of a user shares one token file: one configured for another org
    (a sandbox, a new refresh token) must never call that other org with its token."""
    from zoho_simulator import ZohoSimulator

    with ZohoSimulator() as first, ZohoSimulator(refresh_token="1000.other-org.123") as second:
        for sim, ext in ((first, "101"), (second, "202")):
            owner = sim.add_user("Rep", "rep@example.com", Extension=ext)
            sim.add_record("Contacts", owner, Full_Name="Pedro", Last_Name="Gil", Phone="+34928000000")

        async def route(sim):
            app = App.from_config(zoho_config(sim, zoho={"user_extension_field": "Extension"}))
            try:
                return await decide(app, "+34928000000")
            finally:
                await app.aclose()

        on_first, on_second, first_again = run(route(first)), run(route(second)), run(route(first))

        assert on_first.extensions == ["101"] and first_again.extensions == ["101"]
        assert on_second.extensions == ["202"], "the second org was asked, with a token of its own"
        assert len(second.token_requests()) == 1

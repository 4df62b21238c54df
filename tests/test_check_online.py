"""``crmroute check-config --online``: one cheap request per backend, the names the CRM must know, one clear line when it fails."""

from __future__ import annotations

from click.testing import CliRunner

from fastagi_server.cli import cli
from retailcrm_simulator import KEY


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), env={"CRMROUTE_CONFIG": ""})


def retailcrm_file(path, sim, **keys):
    settings = {"url": sim.url, "api_key": KEY, "site": "main", **keys}
    lines = "\n".join(f'{key} = "{value}"' for key, value in settings.items())
    path.write_text(f'[crm]\nbackend = "retailcrm"\n[routing]\ndefault_region = "RU"\n[retailcrm]\n{lines}\n[outbox]\npath = "{path.parent / "o.sqlite"}"\n')
    return str(path)


def zoho_file(path, sim, **keys):
    settings = {**sim.zoho_config(), **keys}
    lines = "\n".join(f'{key} = "{value}"' for key, value in settings.items())
    path.write_text(f'[crm]\nbackend = "zoho"\n[routing]\ndefault_region = "ES"\n[mirror]\nenabled = false\n[zoho]\n{lines}\n[outbox]\npath = "{path.parent / "o.sqlite"}"\n')
    return str(path)


def test_retailcrm_online_check_passes_with_one_credentials_request(retailcrm, tmp_path):
    result = invoke("check-config", "--online", retailcrm_file(tmp_path / "c.toml", retailcrm))
    assert result.exit_code == 0, result.output
    assert f"backend retailcrm: {retailcrm.url}" in result.output
    assert len(retailcrm.requests_to("/api/credentials")) == 1
    assert KEY not in result.output


def test_retailcrm_wrong_key_fails_in_one_line_without_the_key(retailcrm, tmp_path):
    result = invoke("check-config", "--online", retailcrm_file(tmp_path / "c.toml", retailcrm, api_key="wrong-key-123"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert 'the CRM refused our credentials: GET /api/credentials: 403 Wrong "apiKey" value.' in lines[0]
    assert "wrong-key-123" not in result.output


def test_retailcrm_key_without_the_telephony_methods_or_the_store_fails(retailcrm, tmp_path):
    retailcrm.keys[KEY] = ["/api/users", "/api/telephony/manager"]
    result = invoke("check-config", "--online", retailcrm_file(tmp_path / "c.toml", retailcrm, site="other-shop"))
    assert result.exit_code == 1
    assert "the key may not call /api/telephony/call/event, /api/telephony/calls/upload" in result.output
    assert "retailcrm.site: 'other-shop' is not a store this key may use (it may use: main)" in result.output


def test_retailcrm_unreachable_fails_online_but_only_warns_offline(tmp_path):
    from retailcrm_simulator import RetailCrmSimulator

    with RetailCrmSimulator() as sim:
        path = retailcrm_file(tmp_path / "c.toml", sim)
    offline = invoke("check-config", path)
    assert offline.exit_code == 0 and "warning: could not read the CRM's users" in offline.output
    online = invoke("check-config", "--online", path)
    assert online.exit_code == 1
    assert "could not reach the CRM (retailcrm): GET /api/credentials" in online.output


def test_zoho_online_check_mints_a_token_and_checks_the_extension_field(zoho, tmp_path):
    zoho.add_user("Ana García", "ana@example.com", Extension="101")
    good = invoke("check-config", "--online", zoho_file(tmp_path / "good.toml", zoho, user_extension_field="Extension"))
    assert good.exit_code == 0, good.output
    bad = invoke("check-config", "--online", zoho_file(tmp_path / "bad.toml", zoho, user_extension_field="Extensoin"))
    assert bad.exit_code == 1
    assert "zoho.user_extension_field: 'Extensoin' is not a field of Zoho's users (none of the 1 active users has it)" in bad.output


def test_zoho_refused_refresh_token_fails_online(zoho, tmp_path):
    result = invoke("check-config", "--online", zoho_file(tmp_path / "c.toml", zoho, refresh_token="1000.revoked"))
    assert result.exit_code == 1
    assert "the CRM refused our credentials" in result.output
    assert "1000.revoked" not in result.output


def test_the_local_directory_passes_online(tmp_path):
    result = invoke("check-config", "--online")
    assert result.exit_code == 0, result.output


def desk_file(path, sim, departments=("Support",), **keys):
    settings = {**sim.desk_config(), **keys}
    lines = "\n".join(f'{key} = "{value}"' for key, value in settings.items())
    listed = ", ".join(f'"{d}"' for d in departments)
    path.write_text(
        f'[routing]\ndefault_region = "ES"\nlookup_order = ["Tickets", "Contacts"]\n'
        f'[routing.teams.support]\nextensions = ["300"]\ndepartments = [{listed}]\n'
        f'[zoho_desk]\n{lines}\n[outbox]\npath = "{path.parent / "o.sqlite"}"\n'
    )
    return str(path)


def test_zoho_desk_online_check_proves_the_credentials_and_the_teams_departments(tmp_path):
    from zoho_desk_simulator import ZohoDeskSimulator

    with ZohoDeskSimulator() as desk:
        desk.add_department("Support")
        good = invoke("check-config", "--online", desk_file(tmp_path / "good.toml", desk))
        assert good.exit_code == 0, good.output
        typo = invoke("check-config", "--online", desk_file(tmp_path / "typo.toml", desk, departments=("Suport",)))
        assert "routing.teams.support.departments: 'Suport' is no department of the Zoho Desk portal" in typo.output
        wrong_org = invoke("check-config", "--online", desk_file(tmp_path / "org.toml", desk, org_id="1"))
        assert wrong_org.exit_code == 1 and "Zoho Desk refused our credentials (or zoho_desk.org_id)" in wrong_org.output
        refused = invoke("check-config", "--online", desk_file(tmp_path / "token.toml", desk, refresh_token="1000.revoked"))
        assert refused.exit_code == 1 and "1000.revoked" not in refused.output

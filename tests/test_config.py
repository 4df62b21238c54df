"""crmroute.toml: defaults that work, errors that name the key."""

import pytest

from fastagi_server.config import Config, ConfigError, config_from_dict, load_config


def test_no_file_gives_working_defaults(monkeypatch):
    monkeypatch.delenv("CRMROUTE_CONFIG", raising=False)
    config = load_config(None)
    assert config == Config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 4573)
    assert config.routing.deadline_ms == 1500
    assert config.crm.backend == "local" and config.directory.path == ""


def test_env_variable_names_the_file(tmp_path, monkeypatch):
    file = tmp_path / "c.toml"
    file.write_text("[server]\nport = 5000\n")
    monkeypatch.setenv("CRMROUTE_CONFIG", str(file))
    config = load_config(None)
    assert config.server.port == 5000 and config.source == str(file)


def test_full_file(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text(
        """
[server]
host = "0.0.0.0"
allowed_peers = ["10.0.0.5", "192.168.1.0/24"]
max_sessions = 50

[limits]
reply_timeout_ms = 500

[routing]
deadline_ms = 800
default_region = "es"
lookup_order = ["Contacts", "Leads"]
dial_template = "Local/{ext}@from-internal"

[routing.owner_extensions]
"Ana@Example.com" = ["101", "201"]
"u7" = "107"

[directory]
path = "dir.sqlite"
"""
    )
    config = load_config(file)
    assert config.server.allowed_peers == ("10.0.0.5", "192.168.1.0/24")
    assert config.routing.default_region == "ES"
    assert config.routing.lookup_order == ("Contacts", "Leads")
    assert config.routing.owner_extensions == {"ana@example.com": ("101", "201"), "u7": ("107",)}
    assert config.limits.reply_timeout_ms == 500


@pytest.mark.parametrize(
    "data, message",
    [
        ({"server": {"port": "4573"}}, "server.port: expected an integer"),
        ({"server": {"port": 70000}}, "server: port must be between"),
        ({"server": {"allowed_peers": ["not-an-ip"]}}, "allowed_peers: 'not-an-ip'"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ({"server": 5}, "server: expected a table"),
        ({"routing": {"deadline_ms": True}}, "routing.deadline_ms: expected an integer"),
        ({"routing": {"deadline_ms": 0}}, "routing: deadline_ms must be between"),
        ({"routing": {"default_region": "XX"}}, "default_region 'XX'"),
        ({"routing": {"lookup_order": ["Leads", "Widgets"]}}, "lookup_order: 'Widgets'"),
        ({"routing": {"lookup_order": []}}, "lookup_order must name"),
        ({"routing": {"lookup_order": "Leads,Deals"}}, "lookup_order: 'Leads,Deals'"),
        ({"routing": {"extension_pattern": "("}}, "extension_pattern is not a valid"),
        ({"routing": {"dial_template": "PJSIP/{ext},tT"}}, "dial_template"),
        ({"routing": {"owner_extensions": {"u1": [101]}}}, "routing.owner_extensions.u1[0]: expected a string"),
        ({"crm": {"backend": "salesforce"}}, "crm.backend: 'salesforce' is not a known CRM backend (known: local, zoho, retailcrm"),
        ({"limits": {"max_headers": -5}}, "limits: max_headers must be between"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert message in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


@pytest.mark.parametrize("key", ["client_id", "client_secret", "refresh_token"])
@pytest.mark.parametrize("value", [98765432101234, 9876.5, True])
def test_a_credential_of_the_wrong_type_is_not_echoed(key, value):
    """The error names the key and the type wanted, never the credential's text."""
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"zoho": {key: value}})
    message = str(raised.value)
    assert f"zoho.{key}: expected a string" in message
    assert str(value) not in message and repr(value) not in message and "9876" not in message


def test_other_wrong_types_still_quote_the_value():
    with pytest.raises(ConfigError, match=r"server.port: expected an integer, got str '4573'"):
        config_from_dict({"server": {"port": "4573"}})


def test_every_error_crmroute_raises_on_purpose_has_one_root():
    """A program embedding crmroute catches "anything crmroute" in one clause."""
    from crmlookup import CrmrouteError
    from crmlookup.errors import CrmError, DirectoryImportError
    from crmlookup.extensions import NotAnExtensionList
    from crmlookup.mirror.store import MirrorFileError
    from crmlookup.phone import InvalidNumber
    from dialplan.availability import DeviceStateUnavailable
    from dialplan.outbox import OutboxError
    from dialplan.outcome import InvalidOutcome
    from fastagi_server.config import ConfigError
    from crmlookup.plugins import PluginError
    from fastagi_server.errors import AgiError
    from fastagi_server.handlers import RouteExists

    for error in (CrmError, DirectoryImportError, NotAnExtensionList, MirrorFileError, InvalidNumber,
                  DeviceStateUnavailable, OutboxError, InvalidOutcome, ConfigError, AgiError, PluginError, RouteExists):
        assert issubclass(error, CrmrouteError), error
    assert issubclass(InvalidNumber, ValueError) and issubclass(InvalidOutcome, ValueError), "what caught them before still does"

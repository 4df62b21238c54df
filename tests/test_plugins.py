"""Extension points: CRM plugins by name, AGI scripts by name, the app builder, the public surface."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from asterisk_peer import AsteriskPeer, asterisk_headers
from conftest import agi_server, make_config, run
from crm_double import CrmDouble
from crmlookup import ALL_KINDS, LookupResult, Match, Owner, PluginError, PluginRegistry, WriteKind
from crmlookup.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP
from crmlookup.settings import DirectorySettings
from fastagi_server.app import App
from fastagi_server.config import ConfigError, config_from_dict
from fastagi_server.handlers import RouteExists, builtin_routes

ROOT = Path(__file__).resolve().parent.parent


class StaticBackend:
    name = "static"

    def __init__(self, owner_extension="301", module="Cases"):
        self.owner = Owner("u9", "Una", "una@example.com", (owner_extension,))
        self.module = module

    async def lookup(self, number, modules):
        return LookupResult([Match(self.module, "T-1", "Ticket one", self.owner)], source="live")

    async def aclose(self):
        pass


class TicketsPlugin:
    """A plugin as a third party writes one: its own section, record kind and writer."""

    name = "tickets"
    section = "tickets"
    settings_type = DirectorySettings
    modules = ("Cases",)

    def __init__(self):
        self.writer = CrmDouble(writes=frozenset({WriteKind.CALL}))

    def open_backend(self, settings, context):
        return StaticBackend()

    def open_writer(self, backend, settings):
        return self.writer

    def change_feed(self, backend):
        return None

    async def check_online(self, backend, settings):
        return []

    def describe(self, settings):
        return "tickets"


def test_the_built_in_plugins_are_the_entry_points_setup_cfg_declares():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    declared = dict(
        line.split(" = ", 1) for line in parser["options.entry_points"][ENTRY_POINT_GROUP].strip().splitlines()
    )
    assert {name.strip(): ref.strip() for name, ref in declared.items()} == dict(BUILTIN_PLUGINS)


def test_every_built_in_plugin_loads_and_is_one():
    registry = PluginRegistry(entry_points=False)
    for name in BUILTIN_PLUGINS:
        plugin = registry.get(name)
        assert plugin.name == name and plugin.modules


def test_a_second_plugin_of_a_name_or_a_section_is_refused():
    registry = PluginRegistry([TicketsPlugin()])
    with pytest.raises(PluginError, match="a CRM plugin named 'tickets' is already registered"):
        registry.register(TicketsPlugin())
    other = TicketsPlugin()
    other.name = "tickets2"
    with pytest.raises(PluginError, match=r"section \[tickets\] already belongs to plugin 'tickets'"):
        registry.register(other)


def test_an_object_that_is_not_a_plugin_is_refused_naming_what_it_lacks():
    class Half:
        name = "half"
        section = ""

    with pytest.raises(PluginError, match="not a CRM plugin .*settings_type, modules, open_backend"):
        PluginRegistry([Half()])


def test_an_unknown_backend_names_the_known_ones_and_the_entry_point_group():
    with pytest.raises(ConfigError) as caught:
        make_config({"crm": {"backend": "mycrm"}})
    assert "crm.backend: 'mycrm' is not a known CRM backend (known: local, zoho, retailcrm" in str(caught.value)
    assert "crmroute.backends" in str(caught.value)


def test_a_plugin_section_is_read_like_a_built_in_one():
    plugins = PluginRegistry([TicketsPlugin()])
    config = config_from_dict({"crm": {"backend": "tickets"}, "tickets": {"path": "/srv/t.db"}}, plugins)
    assert config.settings_of(config.plugin) == DirectorySettings(path="/srv/t.db")
    assert config.routing.lookup_order == ("Cases",)  # the plugin's record kinds by default
    with pytest.raises(ConfigError, match=r"tickets.colour: unknown key \(known: path\)"):
        config_from_dict({"crm": {"backend": "tickets"}, "tickets": {"colour": "red"}}, plugins)
    with pytest.raises(ConfigError, match="routing: lookup_order: 'Leads' is not one of Cases, LastAgent, Tickets"):
        config_from_dict({"crm": {"backend": "tickets"}, "routing": {"lookup_order": ["Leads"]}}, plugins)


def test_a_section_no_plugin_owns_is_an_unknown_key():
    with pytest.raises(ConfigError, match="nonsense: unknown key"):
        make_config({"nonsense": {}})


def test_the_delivery_worker_writes_through_a_plugins_writer_and_plans_only_what_it_writes(tmp_path):
    """A backend the worker has never heard of by name, whose writer takes calls only."""
    from dialplan.outcome import outcome_from_channel

    plugin = TicketsPlugin()
    config = config_from_dict({
        "crm": {"backend": "tickets"},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "outcomes": {"senior_manager_id": "u9"},
    }, PluginRegistry([plugin]))

    async def scenario():
        app = App.from_config(config)
        try:
            assert app.writer is plugin.writer
            missed = outcome_from_channel(call_id="1700000000.5", caller="+34928000001", readings={"dial_status": "NOANSWER"}, ended_at=1_700_000_100, region="US")
            await app.record_outcome(missed, 1_700_000_100)
            return await app.delivery_worker.flush()
        finally:
            await app.aclose()

    summary = run(scenario())
    assert summary.delivered == 1
    # An unknown caller who was missed: Zoho would get a lead and a task too; this writer takes calls only.
    assert [(r.kind, r.entry.key) for r in plugin.writer.records] == [(WriteKind.CALL, "1700000000.5")]


def test_agi_scripts_are_added_by_name_and_a_name_twice_is_refused():
    routes = builtin_routes()

    async def greet(session, app):
        await session.set_variable("GREETING", f"hello {session.env.caller_number}")
        return {"status": "OK"}

    routes.add("greet", greet)
    with pytest.raises(RouteExists, match="'greet' is already registered"):
        routes.add("greet", greet)
    with pytest.raises(RouteExists, match="'route' is already registered"):
        routes.add("route", greet)
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        routes.add("bad name/..", greet)

    async def scenario():
        async with agi_server(make_config(), routes=routes) as server:
            with pytest.raises(RouteExists):
                server.add_route("outcome", greet)
            greeted = await AsteriskPeer().call(server.port, asterisk_headers(script="greet", caller="+34928000000"))
            unknown = await AsteriskPeer().call(server.port, asterisk_headers(script="nope"))
            return greeted, unknown

    greeted, unknown = run(scenario())
    assert greeted.variables["GREETING"] == "hello +34928000000"
    assert unknown.variables["CRM_ROUTE_STATUS"] == "ERROR"


def test_the_app_builder_takes_an_embedders_backend_and_writer():
    writer = CrmDouble()

    async def scenario():
        app = App.from_config(make_config(), backend=StaticBackend("302", module="Contacts"), writer=writer)
        try:
            assert app.writer is writer
            async with agi_server(app=app) as server:
                return await AsteriskPeer().call(server.port, asterisk_headers())
        finally:
            await app.aclose()

    result = run(scenario())
    assert result.variables["CRM_TARGET"] == "PJSIP/302"
    assert result.variables["CRM_MODULE"] == "Contacts"


def test_a_reload_builds_the_app_with_the_embedders_builder(tmp_path):
    from fastagi_server.server import FastAgiServer

    built = []

    def build(config, *, serving=False):
        built.append(config.source)
        return App.from_config(config, serving=serving, backend=StaticBackend())

    path = tmp_path / "crmroute.toml"
    path.write_text('[routing]\ndefault_region = "ES"\n')

    async def scenario():
        from fastagi_server.config import load_config

        server = FastAgiServer(build(load_config(path)), build_app=build)
        await server.start("127.0.0.1", 0)
        try:
            assert await server.reload(str(path))
            return isinstance(server.app.backend, StaticBackend)
        finally:
            await server.shutdown(grace_ms=100)

    assert run(scenario())
    assert built == [str(path), str(path)]


def test_every_package_lists_its_public_surface_and_ships_py_typed():
    import crmlookup
    import dialplan
    import fastagi_server

    for package in (crmlookup, dialplan, fastagi_server):
        assert package.__all__, package.__name__
        for name in package.__all__:
            assert getattr(package, name) is not None
        assert (Path(package.__file__).parent / "py.typed").is_file()
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert "py.typed" in parser["options.package_data"]["crmlookup"]


def test_all_kinds_is_what_the_built_in_writers_create():
    from crmlookup.local_directory.writer import LocalDirectoryWriter
    from crmlookup.retailcrm.writer import RetailCrmWriter
    from crmlookup.zoho.writer import ZohoWriter

    assert LocalDirectoryWriter.writes == ZohoWriter.writes == ALL_KINDS
    assert RetailCrmWriter.writes == {WriteKind.CALL}

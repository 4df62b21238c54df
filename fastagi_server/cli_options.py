"""Options several ``crmroute`` commands share, and how each of them reads its configuration."""

from __future__ import annotations

import click

from .config import Config, demo_mode_notice, load_config

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CRMROUTE_CONFIG",
    help="crmroute.toml to read (default: $CRMROUTE_CONFIG, else /etc/crmroute/crmroute.toml if it exists, else built-in defaults).",
)


def command_config(config_path: str | None) -> Config:
    """The configuration a command runs with, every command alike; the demo-mode line on stderr when no file was found."""
    config = load_config(config_path)
    notice = demo_mode_notice(config) if not config.source else ""
    if notice:
        click.echo(f"crmroute: {notice}", err=True)
    return config

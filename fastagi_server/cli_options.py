"""Options several ``crmroute`` commands share."""

import click

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CRMROUTE_CONFIG",
    help="crmroute.toml to read (default: $CRMROUTE_CONFIG, else built-in defaults).",
)

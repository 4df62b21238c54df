"""FastAGI server: the AGI wire protocol, sessions, the entry points and the CLI."""

__version__ = "0.1.0"

"""The `fedasync` command line (typer): a thin layer over `fedasync.ops` and the library."""

from fedasync.cli.app import app

__all__ = ["app"]

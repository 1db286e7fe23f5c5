"""Run the command-line interface: python -m alertwarden."""

from alertwarden.cli import app

app(prog_name="alertwarden")

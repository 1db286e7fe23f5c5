"""alertwarden: stateful threshold alerts over log and security-event streams."""

__version__ = "0.1.0"

"""alertwarden: stateful threshold alerts over log and security-event streams."""

from alertwarden.native import use_sources_when_needed

__version__ = "0.1.0"

SOURCES_REASON = use_sources_when_needed()
"""The reason the compiled modules run from their sources instead, or None when they do not."""

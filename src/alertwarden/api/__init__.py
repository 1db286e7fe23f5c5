"""REST API over the PostgreSQL store: tenants, tokens, rules, group state and history."""

from alertwarden.api.app import create_app

__all__ = ["create_app"]

"""Versioned SQL migrations of the PostgreSQL store, applied by alertwarden.store.migrate."""

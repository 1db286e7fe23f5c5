"""Shared pytest configuration for the test suite."""

# pglite_fixture provides the `timescale_url` fixture, pg_fixture the PostgreSQL databases and
# serve_fixture the `names` and `webhook` fixtures of the serve tests.
# pytest imports them from tests/, which is on sys.path because this conftest.py sits there in a
# folder without __init__.py.
pytest_plugins = ["pglite_fixture", "pg_fixture", "serve_fixture"]

"""The store's contract runs on both backends: the `store` fixture (tests/conftest.py) is
parametrized over SQLite and PostgreSQL."""

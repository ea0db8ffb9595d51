"""Alembic migrations of Broadcaster's tables, run by db/schema.py (they ship inside the `db` package)."""

"""Persistence: SQLAlchemy Core tables, engines and Alembic migrations."""

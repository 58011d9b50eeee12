"""Revisions of the job store's schema, oldest first: 0001 (the schema of ``create_all`` before Alembic), 0002, ..."""

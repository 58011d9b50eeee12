"""Alembic's entry point for the job store: migrations run on the connection :func:`upgrade` hands over.

There is no alembic.ini: the store applies its migrations itself when it opens
(:func:`ticketsolver.jobs.store.migrations.upgrade`). To write a new revision, from the repository root::

    python -m ticketsolver.jobs.store.migrations revision -m "what changes"
"""

from __future__ import annotations

from alembic import context

from ticketsolver.jobs.store.tables import Base


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # offline (``--sql``) mode
        context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata)
    else:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _inside_alembic() -> bool:
    try:
        return context.config is not None
    except AttributeError:  # imported outside an Alembic command (e.g. by a doctest collector)
        return False


if _inside_alembic():
    run_migrations()

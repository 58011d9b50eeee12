"""Memory estimates of items, purged jobs, the health probe row, and job specs in the nested form.

- ``items.memory_bytes``: the estimated peak RSS of the worker building the item (0: not estimated; the
  store estimates unfinished items of older jobs when it opens).
- ``jobs.purged_at``: when a job's files were removed.
- ``store_health``: the one row :meth:`JobStore.health` rewrites as its write probe.
- ``jobs.spec``: the flat parameters of older versions (``seed``, ``verify: true``, ``verify_box``,
  ``n_random``, ...) become the nested ``JobSpec`` form (``build: {...}``, ``verify: {...} | null``), so that
  jobs queued before the upgrade still run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The flat form, frozen here as it was (a migration never imports the live JobSpec).
_BUILD = ("seed", "solver", "input_domain", "resample", "tolerance")
_VERIFY = {
    "verify_box": "input_box",
    "n_random": "n_random",
    "worst_case_starts": "worst_case_starts",
    "worst_case_steps": "worst_case_steps",
    "dtypes": "dtypes",
    "certify": "certify",
}

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))


def nested_spec(flat: dict[str, Any]) -> dict[str, Any]:
    """The nested form of a flat spec (a spec already nested is returned as it is)."""
    if "build" in flat:
        return flat
    n = flat.get("n", [20])
    spec: dict[str, Any] = {
        "n": list(n) if isinstance(n, list | tuple) else [n],
        "arch": flat.get("arch"),
        "build": {key: flat[key] for key in _BUILD if key in flat},
        "verify": None,
        "time_limit_s": None,
    }
    if flat.get("verify", True):
        spec["verify"] = {new: flat[old] for old, new in _VERIFY.items() if old in flat}
    return spec


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("memory_bytes", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("purged_at", sa.Float(), nullable=True))
    op.create_table(
        "store_health",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("probed_at", sa.Float(), nullable=False),
    )
    bind = op.get_bind()
    for job_id, spec in bind.execute(sa.select(_jobs.c.id, _jobs.c.spec)).all():
        if isinstance(spec, dict) and "build" not in spec:
            bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(spec=nested_spec(spec)))


def downgrade() -> None:
    op.drop_table("store_health")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("purged_at")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("memory_bytes")

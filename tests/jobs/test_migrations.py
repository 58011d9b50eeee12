"""Versioned schema: a data dir of the old unversioned schema opens, is upgraded and keeps its jobs."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ticketsolver.jobs.spec import JobSpec, JobState
from ticketsolver.jobs.store import JobStore, StoreError
from ticketsolver.jobs.store.migrations import head_revision

# What Base.metadata.create_all made before the store was versioned (revision 0001), verbatim.
REVISION_1_DDL = """
CREATE TABLE jobs (
    id VARCHAR(32) NOT NULL, state VARCHAR(16) NOT NULL, spec JSON NOT NULL, executor VARCHAR(16) NOT NULL,
    error TEXT, created_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT, PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_jobs_created_at ON jobs (created_at);
CREATE TABLE checkpoints (
    id VARCHAR(32) NOT NULL, job_id VARCHAR(32) NOT NULL, position INTEGER NOT NULL, name VARCHAR(255) NOT NULL,
    size INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, arch VARCHAR(32) NOT NULL, target_params INTEGER NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE INDEX ix_checkpoints_job_id ON checkpoints (job_id);
CREATE TABLE items (
    id VARCHAR(32) NOT NULL, job_id VARCHAR(32) NOT NULL, position INTEGER NOT NULL,
    checkpoint_id VARCHAR(32) NOT NULL, n INTEGER NOT NULL, weight FLOAT NOT NULL, state VARCHAR(16) NOT NULL,
    attempt INTEGER NOT NULL, progress FLOAT NOT NULL, message VARCHAR(200) NOT NULL, error TEXT,
    ticket_file VARCHAR(64), report JSON, problems_solved INTEGER NOT NULL, started_at FLOAT, finished_at FLOAT,
    PRIMARY KEY (id), FOREIGN KEY(job_id) REFERENCES jobs (id), FOREIGN KEY(checkpoint_id) REFERENCES checkpoints (id)
);
CREATE INDEX ix_items_state ON items (state);
CREATE INDEX ix_items_job_id ON items (job_id);
CREATE TABLE layers (
    item_id VARCHAR(32) NOT NULL, pair INTEGER NOT NULL, fraction FLOAT NOT NULL, message VARCHAR(200) NOT NULL,
    updated_at FLOAT NOT NULL, PRIMARY KEY (item_id, pair), FOREIGN KEY(item_id) REFERENCES items (id)
);
"""

# The flat parameters the old service stored with each job.
OLD_SPEC = {
    "n": [10, 12],
    "seed": 3,
    "solver": "auto",
    "input_domain": [0.0, 1.0],
    "resample": 0,
    "tolerance": None,
    "arch": "mlp",
    "verify": True,
    "verify_box": None,
    "n_random": 256,
    "worst_case_starts": 2,
    "worst_case_steps": 10,
    "dtypes": ["float32", "float64"],
    "certify": True,
}
JOB, CKPT, DONE, WAITING = "a" * 32, "b" * 32, "c" * 32, "d" * 32


def _old_data_dir(path) -> None:
    """A data dir as the unversioned store left it: one running job, one item done, one queued."""
    path.mkdir()
    db = sqlite3.connect(path / "jobs.sqlite")
    db.executescript(REVISION_1_DDL)
    db.execute(
        "INSERT INTO jobs VALUES (?, 'running', ?, 'local', NULL, 1000.0, 1001.0, NULL)", (JOB, json.dumps(OLD_SPEC))
    )
    db.execute("INSERT INTO checkpoints VALUES (?, ?, 0, 'net.pt', 1234, ?, 'mlp', 212)", (CKPT, JOB, "0" * 64))
    db.execute(
        "INSERT INTO items VALUES "
        "(?, ?, 0, ?, 10, 2120.0, 'succeeded', 1, 1.0, 'done', NULL, ?, ?, 212, 1001.0, 1002.0)",
        (DONE, JOB, CKPT, f"{DONE}-1.ticket", json.dumps({"ok": True})),
    )
    db.execute(
        "INSERT INTO items VALUES (?, ?, 1, ?, 12, 2544.0, 'queued', 0, 0.0, '', NULL, NULL, NULL, 0, NULL, NULL)",
        (WAITING, JOB, CKPT),
    )
    db.execute("INSERT INTO layers VALUES (?, 0, 1.0, 'done', 1002.0)", (DONE,))
    db.commit()
    db.close()


def _version(path) -> str:
    with sqlite3.connect(path / "jobs.sqlite") as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_an_unversioned_data_dir_is_upgraded_and_keeps_its_jobs(tmp_path):
    data = tmp_path / "data"
    _old_data_dir(data)
    store = JobStore(data)
    assert _version(data) == head_revision()
    job = store.get_job(JOB)
    assert job.state is JobState.RUNNING and job.created_at.timestamp() == 1000.0
    assert [(i.n, i.state, i.has_ticket) for i in job.items] == [(10, "succeeded", True), (12, "queued", False)]
    assert [layer.fraction for layer in job.items[0].layers] == [1.0]
    assert store.item_reports(JOB) == [{"ok": True}, None]
    # the flat parameters became the nested JobSpec, with the same values
    spec = JobSpec.from_dict(job.params)
    assert spec.n == (10, 12) and spec.arch == "mlp"
    assert (spec.build.seed, spec.build.input_domain) == (3, (0.0, 1.0))
    assert spec.verify is not None and (spec.verify.n_random, spec.verify.worst_case_starts) == (256, 2)
    # the queued item got its memory estimate; the finished one needs none
    assert job.items[1].memory_bytes > 0 and job.items[0].memory_bytes == 0
    # and the queued item runs
    task = store.claim_next_item()
    assert task.item_id == WAITING and JobSpec.from_dict(task.spec) == spec
    store.close()


def test_a_job_without_verification_keeps_none(tmp_path):
    data = tmp_path / "data"
    _old_data_dir(data)
    with sqlite3.connect(data / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET spec = ?", (json.dumps({**OLD_SPEC, "verify": False}),))
    store = JobStore(data)
    assert JobSpec.from_dict(store.get_job(JOB).params).verify is None
    store.close()


def test_a_new_store_is_created_at_the_newest_revision_and_reopens_unchanged(tmp_path):
    JobStore(tmp_path).close()
    assert _version(tmp_path) == head_revision()
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    assert {"memory_bytes", "attempt", "ticket_file"} <= columns
    JobStore(tmp_path).close()
    assert _version(tmp_path) == head_revision()


def test_a_store_made_by_a_newer_version_is_refused(tmp_path):
    JobStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer version: upgrade ticketsolver"):
        JobStore(tmp_path)

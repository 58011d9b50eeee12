"""One server per data dir: a second process is refused with the pid of the first; a dead holder frees it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ticketsolver.jobs.store import DataDirInUseError, DataDirLock

HOLDER = """
import sys
from ticketsolver.jobs.store import DataDirLock
lock = DataDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.readline()  # hold it until the test says so
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on ``tmp_path / "data"``."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_a_second_server_is_refused_until_the_first_one_releases(tmp_path, holder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataDirInUseError) as caught:
        DataDirLock("data").acquire()
    assert caught.value.pid == holder.pid
    # the data dir as the operator configured it (never resolved), and the pid of the holder
    assert str(caught.value).startswith(f"data dir data is in use by another ticketsolver server (pid {holder.pid})")
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    with DataDirLock("data") as lock:
        assert lock.held
        assert (tmp_path / "data" / "server.lock").read_text().strip() == str(os.getpid())


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    holder.kill()
    holder.wait(10)
    lock = DataDirLock(tmp_path / "data").acquire()  # the kernel dropped the dead process's lock
    assert lock.held
    lock.release()
    assert not lock.held

"""Sweep jobs (a JobSpec with ``sweep``): the spec, intake's checks, and a worker that runs the library's
run_sweep into the item's folder, reports progress per row, stops when cancelled and, after a crash and a
restart, resumes without building a finished row again (in this process: run_item is what a worker runs)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ticketsolver.errors import ConfigError, JobError
from ticketsolver.jobs import JobSpec, JobStore, Limits, accept_job, run_item
from ticketsolver.jobs import worker as worker_module
from ticketsolver.jobs.intake import LimitError, UploadRejectedError
from ticketsolver.sweep import RESULT_COLUMNS, SweepSpec

from .test_worker import mlp_bytes

#: a cheap verification: float64 on a few random inputs, no worst-case search, no certificate
LIGHT = {"n_random": 16, "worst_case_starts": 0, "certify": False, "dtypes": ["float64"]}
#: two rows: n = 8 and 10 at depth 2L, measured on wine too
SWEEP = {"n": [8, 10], "depth": ["2L"], "data": "wine", "verify": LIGHT}
#: the checkpoint: an MLP of wine's shape, 13 features -> 8 hidden -> 3 classes
WINE_MLP = (13, 8, 3)


def _accept(store: JobStore, params: dict, payloads: list[bytes] | None = None, limits: Limits | None = None) -> str:
    uploads = [(f"net{k}.pt", io.BytesIO(p)) for k, p in enumerate(payloads or [mlp_bytes(0, WINE_MLP)])]
    return accept_job(store, uploads, JobSpec.of_sweep(params), limits or Limits(), "local")


def _run(store: JobStore, task) -> str:
    return run_item(task, {"kind": "local"}, str(store.data_dir), store.url).state


def _table(store: JobStore, item_id: str) -> list[dict[str, str]]:
    with (store.sweep_dir(item_id) / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


class _Crash(BaseException):
    """The worker process dies here (nothing in run_item catches it)."""


# --- the spec ---------------------------------------------------------------------------------------------


def test_the_sweep_section_is_the_librarys_sweep_spec_and_a_dataset():
    spec = JobSpec.of_sweep({**SWEEP, "time_limit_s": 600, "arch": "mlp"})
    assert spec.sweep is not None and spec.verify is None and (spec.time_limit_s, spec.arch) == (600.0, "mlp")
    assert spec.sweep.sweep_spec() == SweepSpec(n=[8, 10], verify=LIGHT)
    assert spec.sweep.data == "wine" and JobSpec.of_sweep({"n": "8:12:2"}).sweep.n == (8, 10, 12)
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored["sweep"]["n"] == [8, 10] and JobSpec.from_dict(stored) == spec
    old = {key: value for key, value in JobSpec(n=[4, 6]).to_dict().items() if key != "sweep"}
    assert JobSpec.from_dict(old).sweep is None  # specs stored before sweeps still load


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "sweep: n is required"),
        ({"n": [0]}, "sweep: n must be a non-empty list of integers in [1, 64]"),
        ({"n": [8], "depth": ["3L"]}, "sweep: depth must be a non-empty list of 2L, L+1, got ['3L']"),
        ({"n": [8], "data": "mnist"}, "sweep: data must be one of digits, digits-flat, wine"),
        ({"n": [8], "colour": 1}, "sweep: unknown field 'colour'"),
        ({"n": [8], "time_limit_s": -1}, "time_limit_s must be a positive number of seconds"),
    ],
)
def test_bad_sweep_values_are_refused_naming_the_field(params, message):
    with pytest.raises(ConfigError) as caught:
        JobSpec.of_sweep(params)
    assert message in str(caught.value)


def test_a_sweep_job_takes_no_build_verify_learn_or_second_n():
    section = {"n": [8, 10]}
    for params, message in [
        ({"sweep": section, "n": [8, 10]}, "give them as sweep.n"),
        ({"sweep": section, "build": {"seed": 3}}, "build does not apply to a sweep job"),
        ({"sweep": section, "verify": {}}, "give the verification settings as sweep.verify"),
        ({"sweep": section, "learn": {"data": "wine"}}, "not both"),
    ]:
        with pytest.raises(ConfigError, match=message):
            JobSpec.from_dict(params)


# --- intake -----------------------------------------------------------------------------------------------


def test_a_sweep_takes_one_checkpoint_that_fits_its_data(store):
    with pytest.raises(JobError, match="a sweep takes one checkpoint, got 2"):
        _accept(store, SWEEP, [mlp_bytes(0, WINE_MLP), mlp_bytes(1, WINE_MLP)])
    with pytest.raises(UploadRejectedError, match=r"'net0.pt': it takes inputs of shape \(8,\), but 'wine' has"):
        _accept(store, SWEEP, [mlp_bytes(0, (8, 16, 3))])
    with pytest.raises(UploadRejectedError, match="'net0.pt': it has 4 outputs, but 'wine' has 3 classes"):
        _accept(store, SWEEP, [mlp_bytes(0, (13, 8, 4))])
    assert store.list_jobs(0, 10)[1] == 0 and list((store.data_dir / "uploads").iterdir()) == []
    job = store.get_job(_accept(store, {"n": [8, 10]}, [mlp_bytes(0, (8, 16, 4))]))  # no data: any shape
    assert len(job.items) == 1 and job.items[0].n is None and job.items[0].memory_bytes > 0


def test_a_sweep_is_limited_by_its_rows_and_its_n(store):
    with pytest.raises(LimitError, match="the sweep has 6 settings to build; the limit is 4 per sweep"):
        _accept(store, {**SWEEP, "n": [8, 10, 12], "resample": [0, 4]}, limits=Limits(max_sweep_rows=4))
    with pytest.raises(LimitError, match="sweep n = 10 is above this service's limit of 8"):
        _accept(store, SWEEP, limits=Limits(max_n=8))
    with pytest.raises(LimitError, match=r"would approximate 278 weights \(2 settings x 139\)"):
        _accept(store, SWEEP, limits=Limits(max_weights_per_job=200))


# --- the worker -------------------------------------------------------------------------------------------


def test_run_item_runs_the_sweep_into_the_items_folder(store, progress_messages):
    job_id = _accept(store, SWEEP)
    task = store.claim_next_item()
    messages = progress_messages
    assert _run(store, task) == "succeeded"
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "succeeded" and not job.items[0].has_ticket and store.ticket_of(task.item_id) is None
    # progress per row: before each build, and all rows at the end
    assert [m for _, m in messages] == [
        "0/2 rows done; building 2L, pure, n = 8",
        "1/2 rows done; building 2L, pure, n = 10",
        "2/2 rows done; drawing the figures",
    ]
    assert [p for p, _ in messages] == [0.0, 0.5, 1.0]
    rows = _table(store, task.item_id)
    assert [int(row["n"]) for row in rows] == [8, 10] and set(RESULT_COLUMNS) <= set(rows[0])
    assert all(row["accuracy_target"] for row in rows)  # measured on wine
    report = store.item_reports(job_id)[0]
    assert report["item"] == {"checkpoint": "net0.pt", "data": "wine"}
    assert report["sweep"]["rows"] == 2 and report["sweep"]["reused"] == 0 and report["sweep"]["skipped"] == []
    assert "figures/error_vs_n.png" in report["sweep"]["figures"]
    for figure in report["sweep"]["figures"]:
        assert (store.sweep_dir(task.item_id) / figure).is_file()


def test_an_interrupted_sweep_resumes_without_redoing_its_rows(store, monkeypatch):
    job_id = _accept(store, SWEEP)
    task = store.claim_next_item()
    row = worker_module._Progress.row

    def die_before_the_second_row(progress, done, total, label):
        if done == 1:
            raise _Crash("the worker process is killed")
        return row(progress, done, total, label)

    monkeypatch.setattr(worker_module._Progress, "row", die_before_the_second_row)
    with pytest.raises(_Crash):
        _run(store, task)
    first = _table(store, task.item_id)
    assert [int(r["n"]) for r in first] == [8]

    reports: list[tuple[int, str]] = []

    def spy(progress, done, total, label):
        reports.append((done, label))
        return row(progress, done, total, label)

    monkeypatch.setattr(worker_module._Progress, "row", spy)
    assert store.requeue_interrupted() == 1  # the service restarts
    again = store.claim_next_item()
    assert again.item_id == task.item_id and again.attempt > task.attempt
    assert _run(store, again) == "succeeded"
    # run_sweep reports each row it builds before building it: n = 8 was not built again
    assert reports == [(1, "2L, pure, n = 10"), (2, "2L, pure, n = 10")]
    rows = _table(store, task.item_id)
    assert rows[0] == first[0] and [int(r["n"]) for r in rows] == [8, 10]  # kept as it was, timings included
    assert store.item_reports(job_id)[0]["sweep"]["reused"] == 1


def test_a_cancelled_sweep_stops_before_its_next_row_and_keeps_the_rows_done(store, monkeypatch):
    job_id = _accept(store, {**SWEEP, "n": [8, 10, 12]})
    task = store.claim_next_item()
    row = worker_module._Progress.row

    def cancel_after_the_first_row(progress, done, total, label):
        if done == 1:
            store.cancel(job_id)  # the user cancels while the sweep runs
        return row(progress, done, total, label)

    monkeypatch.setattr(worker_module._Progress, "row", cancel_after_the_first_row)
    assert _run(store, task) == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert [int(r["n"]) for r in _table(store, task.item_id)] == [8]
    assert not (store.sweep_dir(task.item_id) / "figures").exists()


def test_purging_a_sweep_removes_its_folder(store):
    job_id = _accept(store, {**SWEEP, "n": [8]})
    task = store.claim_next_item()
    assert _run(store, task) == "succeeded"
    store.finalize_jobs()
    assert (store.sweep_dir(task.item_id) / "results.csv").is_file()
    assert store.purge(job_id) > 0
    assert not store.sweep_dir(task.item_id).exists()


def test_a_sweep_that_fails_says_why_without_server_paths(store):
    _accept(store, {**SWEEP, "n": [8]})
    task = store.claim_next_item()
    folder = store.sweep_dir(task.item_id)
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"fingerprint": "another sweep's"}))
    result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    assert result.state == "failed" and "the sweep's folder holds another sweep" in result.error, result.error
    assert str(store.data_dir) not in result.error

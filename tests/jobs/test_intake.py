"""Intake: uploads under server names, read as the CLI reads them, refused with the client's file name,
limits and memory admission."""

from __future__ import annotations

import io
import os
import pickle
import re

import pytest
import torch
from torch import nn

from ticketsolver.config import BuildConfig
from ticketsolver.errors import CheckpointError, JobError
from ticketsolver.jobs.intake import (
    LimitError,
    MemoryBudgetError,
    UploadRejectedError,
    accept_job,
    check_limits,
    display_name,
    sniff_suffix,
)
from ticketsolver.jobs.memory import estimate_peak_bytes
from ticketsolver.jobs.spec import JobSpec, Limits
from ticketsolver.jobs.store import JobStore
from ticketsolver.models import load_target

SPEC = JobSpec(n=[10], verify=None)
_SERVER_ID = re.compile(r"[0-9a-f]{32}")


def mlp(seed: int = 0, sizes=(8, 16, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def saved(module: nn.Module, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


class _MarkerPayload:
    """Unpickling this would create a file: the proof that a checkpoint's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _accept(store, payloads, spec=SPEC, limits=None) -> str:
    uploads = [(name, io.BytesIO(data)) for name, data in payloads]
    return accept_job(store, uploads, spec, limits or Limits(), "local")


def _no_server_names(message: str, store: JobStore) -> None:
    assert str(store.data_dir) not in message and "uploads" not in message
    assert not _SERVER_ID.search(message), message


def test_the_upload_is_stored_under_a_server_id_with_a_server_chosen_suffix(store):
    job_id = _accept(store, [("../../../evil/../net.pt", saved(mlp()))])
    job = store.get_job(job_id)
    assert job.checkpoints[0].name == "net.pt" and job.checkpoints[0].arch == "mlp"
    assert job.checkpoints[0].target_params == 8 * 16 + 16 + 16 * 4 + 4
    (name,) = os.listdir(store.data_dir / "uploads")
    assert _SERVER_ID.fullmatch(name.removesuffix(".pt")) and name.endswith(".pt")


@pytest.mark.parametrize("client_name", ["legacy.pt", "legacy.pth", "no-suffix", None])
def test_a_legacy_torch_save_file_that_the_cli_reads_is_accepted(store, tmp_path, client_name):
    data = saved(mlp(), legacy=True)
    assert not data.startswith(b"PK")  # not a zip: nothing but the content says what it is
    (tmp_path / "legacy.pt").write_bytes(data)
    cli_target = load_target(tmp_path / "legacy.pt")  # what `ticketsolver build legacy.pt` reads
    job_id = _accept(store, [(client_name, data)])
    assert store.get_job(job_id).checkpoints[0].target_params == 8 * 16 + 16 + 16 * 4 + 4
    task = store.claim_next_item()
    worker_target = load_target(store.upload_path(task.checkpoint_id))  # what the worker reads
    assert worker_target.arch == cli_target.arch == "mlp"
    for ours, theirs in zip(worker_target.module.parameters(), cli_target.module.parameters(), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("wrap", ["raw pickle", "torch.save"])
def test_a_pickle_payload_is_refused_naming_the_clients_file_only(store, tmp_path, wrap):
    marker = tmp_path / "code-ran"
    if wrap == "raw pickle":
        payload = pickle.dumps(_MarkerPayload(str(marker)), protocol=2)
    else:
        buffer = io.BytesIO()
        torch.save({"weight": _MarkerPayload(str(marker))}, buffer)
        payload = buffer.getvalue()
    with pytest.raises(UploadRejectedError) as caught:
        _accept(store, [("evil.pt", payload)])
    assert isinstance(caught.value, CheckpointError) and isinstance(caught.value, JobError)
    assert caught.value.filename == "evil.pt"
    assert str(caught.value).startswith("checkpoint 'evil.pt': ") and "pickled objects" in str(caught.value)
    _no_server_names(str(caught.value), store)
    assert not marker.exists()
    assert os.listdir(store.data_dir / "uploads") == []  # nothing of a refused job is kept
    assert store.list_jobs()[1] == 0


def test_a_part_without_a_filename_is_never_echoed(store):
    with pytest.raises(UploadRejectedError) as caught:
        _accept(store, [("good.pt", saved(mlp())), (None, b"\x00garbage that is no checkpoint")])
    message = str(caught.value)
    assert message.startswith("checkpoint 'checkpoint #2': ") and "unknown checkpoint format" in message
    assert "garbage" not in message and "None" not in message
    _no_server_names(message, store)
    assert os.listdir(store.data_dir / "uploads") == []


def test_a_5000_character_filename_is_shortened_for_display_not_refused(store):
    long_name = "x" * 5000 + ".pt"
    job = store.get_job(_accept(store, [(long_name, saved(mlp()))]))
    shown = job.checkpoints[0].name
    assert len(shown) == 120 and shown.startswith("xxx") and shown.endswith(".pt") and "…" in shown
    assert job.items[0].checkpoint == shown


def test_display_name_is_only_for_showing():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\net.pt") == "net.pt"
    assert display_name("a\x00b\nc.pt") == "abc.pt"
    assert display_name(None) == display_name("") == display_name("\x00/") == "checkpoint #1"
    assert display_name(None, 2) == "checkpoint #3"


def test_the_suffix_comes_from_the_content_before_the_client_name():
    assert sniff_suffix(saved(mlp(), legacy=True)[:64], "weights.safetensors") == ".pt"
    assert sniff_suffix(b"PK\x03\x04...", None) == ".pt"
    assert sniff_suffix(b"PK\x03\x04...model/archive_format", None) == ".pt2"
    assert sniff_suffix(b"\x10\x00\x00\x00\x00\x00\x00\x00{", "a.bin") == ".safetensors"
    assert sniff_suffix(b"garbage", "net.ckpt") == ".pt"
    assert sniff_suffix(b"garbage", "net.exe") == sniff_suffix(b"garbage", None) == ""


def test_an_oversized_checkpoint_is_refused_while_copying(store):
    with pytest.raises(LimitError, match="larger than the limit of 100 bytes"):
        _accept(store, [("net.pt", saved(mlp()))], limits=Limits(max_checkpoint_bytes=100))
    assert os.listdir(store.data_dir / "uploads") == []


def test_no_checkpoint_is_refused(store):
    with pytest.raises(JobError, match="no checkpoint"):
        _accept(store, [])


def test_limits_on_n_items_and_weights():
    limits = Limits(max_n=30, max_batch_items=4, max_weights_per_job=1000)
    check_limits(JobSpec(n=20), [100, 100], limits)
    with pytest.raises(LimitError, match="n = 40 is above .* 30"):
        check_limits(JobSpec(n=40), [100], limits)
    with pytest.raises(LimitError, match="5 items; the limit is 4"):
        check_limits(JobSpec(n=[10, 11, 12, 13, 14]), [100], limits)
    with pytest.raises(LimitError, match="1,200 weights"):
        check_limits(JobSpec(n=[10, 12]), [300, 300], limits)


def test_each_item_stores_its_memory_estimate(store):
    net = mlp(sizes=(256, 256, 10))
    job = store.get_job(_accept(store, [("net.pt", saved(net))], spec=JobSpec(n=[10, 40], verify=None)))
    layers = [256 * 256 + 256, 256 * 10 + 10]
    expected = [estimate_peak_bytes(layers, n, verify=False) for n in (10, 40)]  # this job does not verify
    assert [i.memory_bytes for i in job.items] == expected
    assert job.items[0].memory_bytes < job.items[1].memory_bytes


def test_a_depth_l_plus_1_item_is_estimated_for_its_far_wider_network(store):
    """n² values per target weight (LeNet5 at n = 30: 4.5 GiB measured against 0.6 GiB for 2L): the L+1 model."""
    net = mlp(sizes=(256, 256, 10))
    layers = [256 * 256 + 256, 256 * 10 + 10]
    build = BuildConfig(depth="L+1")
    job = store.get_job(_accept(store, [("net.pt", saved(net))], spec=JobSpec(n=30, build=build)))
    assert job.items[0].memory_bytes == estimate_peak_bytes(layers, 30, depth="L+1")
    assert estimate_peak_bytes(layers, 30, depth="L+1") > 2 * estimate_peak_bytes(layers, 30)
    budget = estimate_peak_bytes(layers, 30)  # enough for 2L, not for L+1
    with pytest.raises(MemoryBudgetError, match="'net.pt' at n = 30"):
        spec, limits = JobSpec(n=30, build=build), Limits(memory_budget_bytes=budget)
        _accept(store, [("net.pt", saved(net))], spec=spec, limits=limits)


def test_a_job_whose_item_exceeds_the_memory_budget_is_refused_with_estimate_and_budget(store):
    net = mlp(sizes=(64, 64, 10))
    budget = estimate_peak_bytes([64 * 64 + 64, 64 * 10 + 10], 30)
    with pytest.raises(MemoryBudgetError) as caught:
        _accept(store, [("big.pt", saved(net))], spec=JobSpec(n=[20, 40]), limits=Limits(memory_budget_bytes=budget))
    error = caught.value
    assert error.budget_bytes == budget and error.estimate_bytes > budget
    assert f"{error.estimate_bytes:,} bytes" in str(error) and f"{budget:,} bytes" in str(error)
    assert "'big.pt' at n = 40" in str(error)
    assert os.listdir(store.data_dir / "uploads") == [] and store.list_jobs()[1] == 0
    # n = 20 fits the same budget
    assert _accept(store, [("big.pt", saved(net))], spec=JobSpec(n=20), limits=Limits(memory_budget_bytes=budget))

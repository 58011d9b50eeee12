"""Learned-mask jobs (a JobSpec with ``learn``): the spec's validation and stored JSON, intake's checks of a
checkpoint against the data, and a worker that learns, saves and measures the ticket (in this process:
run_item is what a worker process runs)."""

from __future__ import annotations

import io
import json

import pytest

from ticketsolver.errors import ConfigError
from ticketsolver.jobs import JobSpec, JobStore, Limits, accept_job, run_item
from ticketsolver.jobs import worker as worker_module
from ticketsolver.jobs.intake import LimitError, MemoryBudgetError, UploadRejectedError
from ticketsolver.jobs.spec import LEARN_DATA, LearnSpec
from ticketsolver.jobs.worker import NOT_VERIFIED_LEARNED
from ticketsolver.learning import LearnConfig, learn_mask, random_network_of
from ticketsolver.models import load_target
from ticketsolver.ticket import Ticket

from .test_worker import mlp_bytes

#: IteRand on wine for 2 epochs: 124 examples in batches of 64 are 4 iterations, so a period of 2 redraws twice
LEARN = {"method": "iterand", "keep": 0.5, "epochs": 2, "data": "wine", "rerand_period": 2}


#: the checkpoint: an MLP of wine's shape, 13 features -> 8 hidden -> 3 classes
WINE_MLP = (13, 8, 3)


def _accept(store: JobStore, params: dict, payload: bytes | None = None, limits: Limits | None = None) -> str:
    spec = JobSpec.from_dict(params)
    upload = ("net.pt", io.BytesIO(payload or mlp_bytes(0, WINE_MLP)))
    return accept_job(store, [upload], spec, limits or Limits(), "local")


# --- the spec ---------------------------------------------------------------------------------------------


def test_the_learn_section_is_the_librarys_learn_config_and_a_dataset():
    spec = JobSpec.from_dict({"learn": LEARN})
    assert isinstance(spec.learn, LearnSpec) and spec.learn.data == "wine"
    assert spec.learn.config() == LearnConfig(method="iterand", keep=0.5, epochs=2, rerand_period=2)
    assert JobSpec(learn={"data": "digits"}).learn.config() == LearnConfig()  # the library's defaults


def test_a_learned_job_verifies_nothing_by_default_and_a_build_job_still_does():
    assert JobSpec(learn={"data": "wine"}).verify is None
    assert JobSpec().verify is not None and JobSpec().learn is None


def test_stored_json_round_trips_and_specs_stored_before_learn_still_load():
    spec = JobSpec.from_dict({"learn": {**LEARN, "width": 2, "init": "kaiming_normal"}, "time_limit_s": 60})
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored["learn"]["data"] == "wine" and stored["learn"]["width"] == 2.0
    assert JobSpec.from_dict(stored) == spec
    old = {key: value for key, value in JobSpec(n=[4, 6]).to_dict().items() if key != "learn"}
    assert JobSpec.from_dict(old).learn is None and JobSpec.from_dict(old).n == (4, 6)


def test_the_store_keeps_a_learned_jobs_params_as_json(store):
    """The jobs table stores the spec in a JSON column: a new section needs no migration."""
    job_id = _accept(store, {"learn": LEARN})
    job = store.get_job(job_id)
    assert job.params["learn"]["method"] == "iterand"
    assert JobSpec.from_dict(job.params) == JobSpec.from_dict({"learn": LEARN})
    assert len(job.items) == 1  # one item per checkpoint


@pytest.mark.parametrize(
    "learn, message",
    [
        ({"data": "wine", "keep": 0}, "learn: keep must be a number in (0, 1], got 0"),
        ({"data": "wine", "keep": 1.5}, "learn: keep must be a number in (0, 1], got 1.5"),
        ({"data": "mnist"}, "learn: data must be one of digits, digits-flat, wine (the bundled datasets), got 'mnist'"),
        ({"keep": 0.5}, "learn: data is required"),
        ({"data": "wine", "method": "sgd"}, "learn: method must be one of edge-popup, iterand, got 'sgd'"),
        ({"data": "wine", "colour": 1}, "learn: unknown field 'colour'"),
        ({"data": "wine", "method": "iterand", "epochs": 200, "rerand_period": 1}, "give rerand_period >= 2"),
    ],
)
def test_bad_learn_values_are_refused_naming_the_field(learn, message):
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_dict({"learn": learn})
    assert message in str(caught.value)
    assert str(caught.value).startswith("JobSpec: ")


def test_a_learned_job_takes_one_value_of_n_at_most_and_learn_keys_belong_in_learn():
    with pytest.raises(ConfigError, match="n lists 2 values, but a learned-mask job"):
        JobSpec.from_dict({"n": [8, 12], "learn": LEARN})
    assert JobSpec.from_dict({"n": 8, "learn": LEARN}).n == (8,)  # accepted and not used
    with pytest.raises(ConfigError, match="unknown field 'epochs': it is a mask-learning setting, give it as learn"):
        JobSpec.from_dict({"epochs": 3})


def test_the_bundled_data_table_is_what_the_loaders_give():
    for name, facts in LEARN_DATA.items():
        data = LearnSpec(data=name).load_data()
        assert (data.input_shape, data.num_classes) == (facts.input_shape, facts.classes), name
        assert (len(data.x_train), len(data.x_test)) == (facts.train_examples, facts.test_examples), name


# --- intake -----------------------------------------------------------------------------------------------


def test_a_checkpoint_that_does_not_fit_the_data_is_refused_naming_it(store):
    with pytest.raises(UploadRejectedError, match=r"'net.pt': it takes inputs of shape \(8,\), but 'wine' has \(13,\)"):
        _accept(store, {"learn": LEARN}, mlp_bytes(0, (8, 16, 3)))
    with pytest.raises(UploadRejectedError, match="'net.pt': it has 4 outputs, but 'wine' has 3 classes"):
        _accept(store, {"learn": LEARN}, mlp_bytes(0, (13, 8, 4)))
    assert store.list_jobs(0, 10)[1] == 0
    assert list((store.data_dir / "uploads").iterdir()) == []


def test_a_learned_item_is_admitted_by_its_random_network_not_by_n(store):
    """n does not limit a learned job; its memory estimate and the weight limit follow the random network."""
    job_id = _accept(store, {"n": 30, "learn": LEARN}, limits=Limits(max_n=8))
    assert store.get_job(job_id).items[0].memory_bytes > 0
    with pytest.raises(MemoryBudgetError, match=r"learning a mask at width 64 \(.* random values\) needs an estimated"):
        _accept(store, {"learn": {**LEARN, "width": 64}}, limits=Limits(memory_budget_bytes=500 * 1024**2))
    with pytest.raises(LimitError, match="would learn masks over 6,400 weights"):  # 13 x 400 + 400 x 3 values
        _accept(store, {"learn": {**LEARN, "width": 50}}, limits=Limits(max_weights_per_job=5000))


# --- the worker -------------------------------------------------------------------------------------------


def test_run_item_learns_saves_and_measures_the_ticket(store, progress_messages):
    job_id = _accept(store, {"learn": LEARN})
    task = store.claim_next_item()
    messages = progress_messages
    result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    assert result.state == "succeeded", result.error
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.items[0].progress == 1.0
    assert job.items[0].layers == [] and job.items[0].problems_solved == 0
    # progress per epoch: the last epoch is always written, and progress never goes back
    assert any(message.startswith("epoch 2/2: loss ") for _, message in messages), messages
    assert [p for p, _ in messages] == sorted(p for p, _ in messages)

    ticket = Ticket.load(store.ticket_of(task.item_id))
    assert ticket.learned and ticket.sizes()["source_kind"] == "rerandomized"
    assert ticket.build["rerandomization"]["events"] == 2
    # the same ticket as the library's own calls make
    target = load_target(store.upload_path(task.checkpoint_id))
    spec = JobSpec.from_dict({"learn": LEARN}).learn
    network = random_network_of(target, keep=0.5, seed=0)
    assert ticket.kept_hash() == learn_mask(network, spec.load_data(), spec.config()).kept_hash()

    report = store.item_reports(job_id)[0]
    assert report["item"] == {"checkpoint": "net.pt", "method": "iterand", "data": "wine"}
    assert report["kept_values_sha256"] == ticket.kept_hash()
    assert report["verification"] is None and report["verification_note"] == NOT_VERIFIED_LEARNED
    assert report["task"]["accuracy"] == ticket.build["task"]["test_accuracy"]
    assert report["task"]["examples"] == LEARN_DATA["wine"].test_examples
    assert report["ticket"]["learned"]["method"] == "iterand"
    assert report["ticket"]["sizes"] == ticket.sizes()


def test_a_cancelled_learned_item_stops_at_its_next_epoch_and_leaves_no_ticket(store, monkeypatch):
    job_id = _accept(store, {"learn": {**LEARN, "epochs": 5}})
    task = store.claim_next_item()
    epoch = worker_module._Progress.epoch

    def cancel_after_the_first_epoch(progress, done, epochs, stats):
        if done == 1:
            store.cancel(job_id)  # the user cancels while the mask is being learned
        return epoch(progress, done, epochs, stats)

    monkeypatch.setattr(worker_module._Progress, "epoch", cancel_after_the_first_epoch)
    assert run_item(task, {"kind": "local"}, str(store.data_dir), store.url).state == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_a_target_of_the_wrong_shape_fails_the_item_with_the_reason(store):
    """Intake refuses it; a checkpoint replaced on disk afterwards fails in the worker, with a message."""
    _accept(store, {"learn": LEARN})
    task = store.claim_next_item()
    store.upload_path(task.checkpoint_id).write_bytes(mlp_bytes(0, (8, 16, 3)))
    result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    assert result.state == "failed" and "inputs are (13,), the network takes (8,)" in result.error
    assert list((store.data_dir / "tickets").iterdir()) == []

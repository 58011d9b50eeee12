"""verify_networks end to end: exact and perturbed pairs, the report, the input box and law, validation, devices."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from ticketsolver import ConfigError, VerifyConfig
from ticketsolver.errors import VerificationError
from ticketsolver.verification import Report, verify_networks

from .helpers import (
    build_pruned,
    lenet5,
    mlp,
    odd_conv_net,
    offset_blocks_pair,
    perturb_second,
    single_thread,  # noqa: F401  (autouse fixture)
)

REPORT_KEYS = {
    "device",
    "device_note",
    "dtypes",
    "input_shape",
    "input_box",
    "sections",
    "layers",
    "worst_case",
    "certified",
    "seconds",
    "seed",
    "torch_version",
    "notes",
}


@pytest.fixture(scope="module")
def lenet_report() -> Report:
    """LeNet5 with exact hand-made O pairs on [0, 1] images, labelled data and random inputs."""
    target = lenet5(0)
    pruned = build_pruned(target, input_nonneg=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (48,), generator=generator)
    config = VerifyConfig(input_box=(0.0, 1.0), n_random=64, batch_size=32, worst_case_starts=4, worst_case_steps=10)
    return verify_networks(target, pruned, config, input_shape=(1, 28, 28), data=(x, y), device="cpu")


def test_exact_lenet5_pair_agrees_to_rounding(lenet_report: Report) -> None:
    for section in ("data", "random"):
        m64 = lenet_report.sections[section]["float64"]
        m32 = lenet_report.sections[section]["float32"]
        assert m64.max_abs_error < 1e-12 and m32.max_abs_error < 1e-5
        assert m64.top1_agreement == 1.0
    data64 = lenet_report.sections["data"]["float64"]
    assert data64.n_inputs == 48 and data64.accuracy_target == data64.accuracy_pruned
    assert lenet_report.sections["random"]["float32"].accuracy_target is None
    for check in lenet_report.layers["float64"]:
        assert check.construction == "output_blocks"
        assert check.pair_vs_effective_relative < 1e-12 and check.pair_vs_target_relative < 1e-12
    assert [c.index for c in lenet_report.layers["float32"]] == [0, 3, 7, 9, 11]
    assert lenet_report.certified is not None and lenet_report.certified.max_bound < 1e-9
    assert lenet_report.worst_case["float64"].max_abs_error < 1e-12


def test_report_to_dict_is_plain_json_with_the_documented_keys(lenet_report: Report, tmp_path) -> None:
    d = lenet_report.to_dict()
    assert set(d) == REPORT_KEYS
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert set(d["sections"]) == {"data", "random"} and set(d["sections"]["data"]) == {"float32", "float64"}
    assert d["input_box"]["source"] == "declared" and d["input_shape"] == [1, 28, 28]
    assert d["input_box"]["law_name"] == "uniform" and d["input_box"]["law"] == "uniform in the box"
    assert d["certified"]["exact_arithmetic"] is True
    assert {"total", "certified", "data/float32", "random/float64", "worst_case/float32"} <= set(d["seconds"])
    path = lenet_report.to_json(tmp_path / "report.json")
    assert json.loads(path.read_text()) == d


def test_report_renders_summary_and_layer_tables(lenet_report: Report) -> None:
    out = io.StringIO()
    lenet_report.render(Console(file=out, width=200))
    text = out.getvalue()
    for needle in ("f vs g", "float32", "float64", "per layer", "certified", "Linear 400->120", "top-1"):
        assert needle in text
    flat = " ".join(text.split())
    assert "certified sup |f-g|, exact arithmetic" in flat
    assert "certified sup |f-g|, forward pass in this dtype" in flat
    assert "random inputs: uniform in the box" in flat and "input box [0, 1] per feature (declared)" in flat


def test_device_is_reported(lenet_report: Report) -> None:
    assert lenet_report.device == "cpu"
    if not torch.cuda.is_available():
        assert lenet_report.device_note == "ran on CPU: no GPU present"


def test_perturbed_pairs_bound_holds_over_every_observation() -> None:
    target = odd_conv_net(0)
    pruned = build_pruned(target, input_nonneg=False, perturb=1e-3, seed=0)
    x = torch.rand(40, 2, 12, 12) * 2 - 1
    config = VerifyConfig(input_box=(-1.0, 1.0), n_random=200, seed=1)
    report = verify_networks(target, pruned, config, input_shape=(2, 12, 12), data=(x, None))
    bound = report.certified.max_bound
    observed = [report.sections[s]["float64"].max_abs_error for s in ("data", "random")]
    worst = report.worst_case["float64"]
    assert max(observed) <= worst.max_abs_error <= bound < 100 * worst.max_abs_error
    assert worst.max_abs_error >= report.sections["random"]["float64"].max_abs_error
    assert {k.split(":")[0] for k in worst.start_kinds} == {"data", "random"}
    # float rounding is far below the 1e-3 perturbation: float32 and float64 see the same error
    assert report.sections["random"]["float32"].max_abs_error == pytest.approx(observed[1], rel=1e-3)
    assert [c.construction for c in report.layers["float64"]] == [
        "input_blocks",
        "output_blocks",
        "output_blocks",
    ]


def test_box_is_derived_from_data_when_not_given() -> None:
    target = mlp(1)
    pruned = build_pruned(target, input_nonneg=False, perturb=1e-3)
    x = torch.randn(30, 13)
    config = VerifyConfig(n_random=20, dtypes=("float64",), worst_case_steps=5)
    report = verify_networks(target, pruned, config, input_shape=(13,), data=(x, None))
    box = report.input_box
    assert box["source"].startswith("from data") and box["law_name"] == "uniform"
    assert box["lo_min"] == pytest.approx(x.min().item()) and box["hi_max"] == pytest.approx(x.max().item())
    assert report.dtypes == ["float64"] and set(report.worst_case) == {"float64"}


def test_caller_modules_are_not_changed() -> None:
    target = mlp(2)
    pruned = build_pruned(target, input_nonneg=True, perturb=1e-3)
    before = {k: v.clone() for k, v in {**target.state_dict(), **pruned.state_dict()}.items()}
    verify_networks(
        target, pruned, VerifyConfig(input_box=(0.0, 1.0), n_random=16, worst_case_steps=3), input_shape=(13,)
    )
    after = {**target.state_dict(), **pruned.state_dict()}
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)
    assert all(p.requires_grad and p.grad is None for p in [*target.parameters(), *pruned.parameters()])


def test_progress_is_reported_up_to_one() -> None:
    target = mlp(3)
    pruned = build_pruned(target, input_nonneg=True)
    seen: list[tuple[str, float]] = []
    verify_networks(
        target,
        pruned,
        VerifyConfig(input_box=(0.0, 1.0), n_random=50, batch_size=16, worst_case_steps=2),
        input_shape=(13,),
        progress=lambda step, fraction: seen.append((step, fraction)),
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {s for s, _ in seen} == {
        "random/float32",
        "random/float64",
        "worst_case/float32",
        "worst_case/float64",
        "certified",
    }


def test_without_worst_case_and_certificate() -> None:
    target = mlp(4)
    config = VerifyConfig(input_box=(0.0, 1.0), n_random=8, worst_case_starts=0, certify=False)
    report = verify_networks(target, build_pruned(target, input_nonneg=True), config, input_shape=(13,))
    assert report.worst_case == {} and report.certified is None
    assert report.to_dict()["certified"] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"random_law": "cauchy"}, "unknown random_law 'cauchy'"),
        ({"data": (torch.rand(4, 12), None)}, r"data inputs must have shape \(N, 13\) with N > 0, got \(4, 12\)"),
        ({"data": (torch.rand(4, 13), torch.zeros(3, dtype=torch.long))}, r"labels must have shape \(4,\), got \(3,\)"),
        ({"data": (torch.rand(4, 13), torch.zeros(4))}, "labels must be an integer tensor"),
        ({"data": (torch.full((4, 13), float("nan")), None)}, "data inputs contain NaN or infinite values"),
        ({"input_shape": (14,)}, r"do not accept inputs of shape \(14,\)"),
        ({"device": "not-a-device"}, "unknown device 'not-a-device'"),
    ],
    ids=["law", "data-shape", "label-shape", "float-labels", "nan-data", "input-shape", "device"],
)
def test_bad_arguments_raise_verification_error(kwargs, match) -> None:
    target = mlp(5)
    pruned = build_pruned(target, input_nonneg=True)
    config = VerifyConfig(input_box=(0.0, 1.0), n_random=4, certify=False)
    with pytest.raises(VerificationError, match=match):
        verify_networks(target, pruned, config, **{"input_shape": (13,), **kwargs})


@pytest.mark.parametrize("config", [{"n_random": 4}, None, 4], ids=["a-dict", "None", "an-int"])
def test_anything_but_a_verify_config_is_refused(config) -> None:
    target = mlp(5)
    with pytest.raises(ConfigError, match="config must be a VerifyConfig"):
        verify_networks(target, build_pruned(target, input_nonneg=True), config, input_shape=(13,))


def test_mismatched_networks_raise_before_running() -> None:
    with pytest.raises(VerificationError, match="modules"):
        verify_networks(mlp(6), build_pruned(lenet5(0), input_nonneg=True), VerifyConfig(), input_shape=(13,))


def test_output_blocks_first_layer_on_a_signed_box_is_not_certified_and_the_rest_runs() -> None:
    target = mlp(7)
    pruned = build_pruned(target, input_nonneg=True)
    config = VerifyConfig(input_box=(-1.0, 1.0), n_random=8, worst_case_steps=1)
    report = verify_networks(target, pruned, config, input_shape=(13,))
    assert report.certified is not None and report.certified.max_bound is None
    assert "not provably >= 0" in (report.certified.not_certified or "")
    assert set(report.worst_case) == {"float32", "float64"} and report.sections["random"]
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    text = " ".join(out.getvalue().split())
    assert "not certified" in text and "not provably >= 0" in text
    assert json.loads(json.dumps(report.to_dict()))["certified"]["max_bound"] is None


def test_without_a_box_or_data_the_documented_default_law_is_used() -> None:
    """No box and no data: not an error. Standardised features: N(0, 1) per feature clipped to [-6, 6]."""
    target = mlp(11)
    pruned = build_pruned(target, input_nonneg=False, perturb=1e-3)
    report = verify_networks(target, pruned, VerifyConfig(n_random=400, worst_case_steps=3), input_shape=(13,))
    box = report.input_box
    assert box["source"].startswith("default") and box["law_name"] == "normal"
    assert box["law"] == "standard normal per feature, clipped to the box"
    assert (box["lo_min"], box["hi_max"]) == (-6.0, 6.0)
    assert report.certified is not None and report.certified.max_bound is not None
    assert report.worst_case["float64"].max_abs_error <= report.certified.max_bound
    assert all(kind.split(":")[0] in ("random", "normal") for kind in report.worst_case["float64"].start_kinds)
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    text = " ".join(out.getvalue().split())
    assert "input box [-6, 6] per feature (default: nothing declared, no data)" in text
    assert "random inputs: standard normal per feature, clipped to the box" in text


def test_normal_law_draws_standardised_inputs_inside_the_box() -> None:
    from ticketsolver.verification.inputs import sample_inputs

    x = sample_inputs(torch.tensor(-6.0), torch.tensor(6.0), 4000, (13,), seed=0, law="normal")
    assert x.min() >= -6.0 and x.max() <= 6.0
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1.0) < 0.02
    narrow = sample_inputs(torch.zeros(13), torch.full((13,), 0.5), 100, (13,), seed=0, law="normal")
    assert narrow.min() >= 0.0 and narrow.max() <= 0.5


def test_offset_blocks_pairs_are_compared_with_their_effective_layer_only_inside_their_box() -> None:
    torch.manual_seed(12)
    target = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    pruned = torch.nn.Sequential(perturb_second(offset_blocks_pair(target[0], h=1.0), 1e-3, seed=12)).eval()
    x = torch.rand(40, 4) * 4 - 2  # many inputs outside [-1, 1], where the pair is not linear
    config = VerifyConfig(input_box=(-1.0, 1.0), n_random=50, worst_case_steps=5)
    report = verify_networks(target, pruned, config, input_shape=(4,), data=(x, None))
    for dtype in ("float32", "float64"):
        (check,) = report.layers[dtype]
        assert check.construction == "offset_blocks"
        assert 0 < check.outside_linear_region <= 40  # only data lies outside; the random inputs are in the box
    assert report.layers["float64"][0].pair_vs_effective_relative < 1e-12
    assert report.layers["float64"][0].pair_vs_target > 1e-4  # the perturbation, seen on every input
    certified = report.certified
    assert certified is not None and certified.max_bound is not None
    assert report.worst_case["float64"].max_abs_error <= certified.max_bound  # the search stays in the box
    out = io.StringIO()
    report.render(Console(file=out, width=200))
    assert "inputs outside: layer 0" in " ".join(out.getvalue().split())


def test_float32_certified_bound_covers_the_float32_forward_passes_of_a_built_ticket() -> None:
    """A real ticket (signed inputs, nothing declared) verified with no box and no data, as the CLI does."""
    from ticketsolver import BuildConfig, build_ticket, verify

    target = mlp(12, d_in=13, width=16, d_out=3)
    ticket = build_ticket(target, BuildConfig(n=12), input_shape=(13,))
    config = VerifyConfig(n_random=500, worst_case_starts=4, worst_case_steps=10)
    report = verify(target, ticket, config, device="cpu")
    box = report.input_box
    assert box["law_name"] == "normal" and ("default" in box["source"])
    certified = report.certified
    assert certified is not None and certified.max_bound is not None, certified and certified.not_certified
    float32 = certified.forward["float32"]
    assert float32.max_bound is not None
    assert float32.max_bound >= certified.max_bound
    assert float32.max_bound >= report.sections["random"]["float32"].max_abs_error
    assert float32.max_bound >= report.worst_case["float32"].max_abs_error


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_asking_for_cuda_without_one_is_a_verification_error() -> None:
    target = mlp(9)
    with pytest.raises(VerificationError, match="no CUDA device"):
        verify_networks(
            target, build_pruned(target, input_nonneg=True), VerifyConfig(), input_shape=(13,), device="cuda"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_run_matches_cpu_in_float64() -> None:
    target = odd_conv_net(2)
    pruned = build_pruned(target, input_nonneg=False, perturb=1e-3, seed=2)
    config = VerifyConfig(input_box=(-1.0, 1.0), n_random=128, worst_case_steps=10)
    gpu = verify_networks(target, pruned, config, input_shape=(2, 12, 12), device="cuda")
    cpu = verify_networks(target, pruned, config, input_shape=(2, 12, 12), device="cpu")
    assert gpu.device.startswith("cuda") and "TF32 off" in gpu.device_note
    for dtype, rel in (("float64", 1e-9), ("float32", 1e-2)):
        assert gpu.sections["random"][dtype].max_abs_error == pytest.approx(
            cpu.sections["random"][dtype].max_abs_error, rel=rel
        )
    assert gpu.certified.max_bound == pytest.approx(cpu.certified.max_bound, rel=1e-9)


def test_in_place_relu_neither_breaks_the_ascent_nor_writes_into_the_data() -> None:
    target = torch.nn.Sequential(torch.nn.ReLU(inplace=True), *mlp(8))
    pruned = build_pruned(target, input_nonneg=False, perturb=1e-3)
    x = torch.randn(20, 13, dtype=torch.float64)
    before = x.clone()
    report = verify_networks(
        target, pruned, VerifyConfig(n_random=8, worst_case_steps=3), input_shape=(13,), data=(x, None)
    )
    assert torch.equal(x, before)
    assert report.worst_case["float64"].max_abs_error > 0


def test_pairs_with_torch_prune_buffers_verify_like_plain_ones() -> None:
    target = mlp(10)
    plain = build_pruned(target, input_nonneg=True, perturb=1e-3)
    reparametrised = build_pruned(target, input_nonneg=True, perturb=1e-3)
    for module in reparametrised.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.utils.prune.custom_from_mask(module, "weight", module.weight != 0)
    config = VerifyConfig(input_box=(0.0, 1.0), n_random=32, worst_case_steps=3)
    a = verify_networks(target, plain, config, input_shape=(13,)).to_dict()
    b = verify_networks(target, reparametrised, config, input_shape=(13,)).to_dict()
    for dtype in ("float32", "float64"):
        a["worst_case"][dtype].pop("seconds"), b["worst_case"][dtype].pop("seconds")
    for key in ("sections", "layers", "worst_case"):
        assert a[key] == b[key]
    assert a["certified"]["per_output"] == b["certified"]["per_output"]
    assert hasattr(reparametrised[0].first, "weight_orig")  # the caller's module keeps its reparametrisation

"""Output metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ticketsolver.errors import VerificationError
from ticketsolver.verification import OutputComparison, compare_outputs

from .helpers import single_thread  # noqa: F401  (autouse fixture)

F_OUT = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-4.0, 1.0, 0.0]])
G_OUT = torch.tensor([[1.0, 2.5, 3.0], [0.0, 0.1, 0.0], [-4.0, 1.0, 0.5]])
LABELS = torch.tensor([2, 1, 1])


def test_metrics_match_hand_computed_values() -> None:
    m = compare_outputs(F_OUT, G_OUT, LABELS)
    assert m.n_inputs == 3
    assert m.max_abs_error == pytest.approx(0.5)
    assert m.mean_abs_error == pytest.approx((0.5 + 0.1 + 0.5) / 3)
    # input 1 has an all-zero target: its relative error is undefined and it is counted, not averaged
    assert m.n_zero_target == 1
    assert m.relative_error_max == pytest.approx(0.5 / 3)
    assert m.relative_error_mean == pytest.approx((0.5 / 3 + 0.5 / 4) / 2)
    # argmax f = [2, 0, 1] (ties go to the first), argmax g = [2, 1, 1]
    assert m.top1_agreement == pytest.approx(2 / 3)
    assert m.accuracy_target == pytest.approx(2 / 3)
    assert m.accuracy_pruned == pytest.approx(1.0)
    assert m.argmax_input == 0


def test_without_labels_accuracies_are_none() -> None:
    m = compare_outputs(F_OUT, G_OUT)
    assert m.accuracy_target is None and m.accuracy_pruned is None


def test_identical_outputs_have_zero_error_and_full_agreement() -> None:
    m = compare_outputs(F_OUT[[0, 2]], F_OUT[[0, 2]].clone())
    assert m.max_abs_error == 0.0 and m.relative_error_max == 0.0 and m.top1_agreement == 1.0


def test_all_zero_targets_leave_relative_error_undefined() -> None:
    m = compare_outputs(torch.zeros(2, 3), torch.ones(2, 3))
    assert m.relative_error_max is None and m.relative_error_mean is None and m.n_zero_target == 2


def test_batches_accumulate_to_the_one_shot_result() -> None:
    acc = OutputComparison()
    acc.update(F_OUT[:2], G_OUT[:2], LABELS[:2])
    acc.update(F_OUT[2:], G_OUT[2:], LABELS[2:])
    assert acc.result() == compare_outputs(F_OUT, G_OUT, LABELS)
    expected = torch.tensor([0.5, 0.1, 0.5], dtype=torch.float32).double()  # the float32 values, exactly
    assert torch.equal(acc.per_input_abs_error, expected)


def test_float32_outputs_are_compared_in_float64() -> None:
    f = torch.tensor([[1.0, 0.0]], dtype=torch.float32)
    g = torch.tensor([[1.0 + 2**-23, 0.0]], dtype=torch.float32)
    assert compare_outputs(f, g).max_abs_error == 2**-23


def test_to_dict_is_plain_json() -> None:
    d = compare_outputs(F_OUT, G_OUT, LABELS).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert all(v is None or isinstance(v, int | float) for v in d.values())
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in d.values())


def test_shape_mismatch_raises() -> None:
    with pytest.raises(VerificationError, match="shape"):
        compare_outputs(F_OUT, G_OUT[:, :2])
    with pytest.raises(VerificationError, match="labels"):
        compare_outputs(F_OUT, G_OUT, torch.tensor([0, 1]))


def test_labels_for_some_batches_only_raise() -> None:
    acc = OutputComparison()
    acc.update(F_OUT, G_OUT, LABELS)
    with pytest.raises(VerificationError, match="every batch"):
        acc.update(F_OUT, G_OUT)


def test_nothing_compared_raises() -> None:
    with pytest.raises(VerificationError, match="no outputs"):
        OutputComparison().result()

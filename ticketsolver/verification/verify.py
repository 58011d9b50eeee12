"""verify_networks: run every check of docs/design.md section 5 on a target f and its pruned network g.

Verification stage entry point, called by ``ticketsolver verify``, the service and the build's final
report. It validates that g corresponds to f module by module and computes the certified bound in float64
(cheap, so first), then, in each dtype (float32 and float64 by default) on deep copies of both networks on
the device (GPU when present): compares outputs on the given data and on random inputs of the box, checks
every pruned pair against its target layer and its effective layer, and searches for a worst case by
projected gradient ascent. The box is the one given, else the data's range, else the documented default
(:mod:`ticketsolver.verification.inputs`); the report says which. The caller's modules and tensors are
never changed.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ticketsolver.config import VerifyConfig
from ticketsolver.errors import ConfigError, VerificationError
from ticketsolver.verification.certified import certify_bound
from ticketsolver.verification.inputs import (
    DEFAULT_LAW,
    LAWS,
    SOURCE_DATA,
    SOURCE_DECLARED,
    SOURCE_DEFAULT,
    default_input_box,
    sample_inputs,
)
from ticketsolver.verification.layers import LayerChecker, validate_networks
from ticketsolver.verification.metrics import OutputComparison
from ticketsolver.verification.report import Report
from ticketsolver.verification.worst_case import search_worst_case

__all__ = ["verify_networks"]

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def verify_networks(
    target: nn.Sequential,
    pruned: nn.Sequential,
    config: VerifyConfig = VerifyConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    input_shape: tuple[int, ...],
    data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    box_source: str | None = None,
    random_law: str | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Report:
    """Measures how closely the pruned network g follows the target f, and certifies a bound.

    Args:
        target: f, an ``nn.Sequential`` in normal form (Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten).
        pruned: g, the same Sequential with each Linear/Conv2d replaced by a ``PrunedPair``.
        config: what to measure and how hard to look (:class:`~ticketsolver.config.VerifyConfig`): the input
            box (None: per-feature min/max of ``data``, and without data the default box of
            :func:`~ticketsolver.verification.inputs.default_input_box`), the number of random inputs, the
            worst-case search (half of its starts are the data points with the largest errors when data is
            given, the rest the random inputs with the largest errors, then fresh points), the dtypes, the
            certified bound, the per-layer check and the seed (the same inputs on every device).
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)`` or ``(13,)``.
        data: ``(inputs (N, *input_shape), labels (N,) int or None)`` or None.
        box_source: where ``config.input_box`` came from, as the report states it (default ``"declared"``).
        random_law: law of the random inputs, ``"uniform"`` in the box or ``"normal"`` (standard normal per
            feature, clipped to the box); None: normal on the default box, uniform on any other.
        device: the torch device; cuda when available if None.
        progress: called as ``progress(step name, fraction done in [0, 1])``.

    Returns:
        A :class:`Report` with every number measured.

    Raises:
        ConfigError: ``config`` is not a :class:`~ticketsolver.config.VerifyConfig`.
        VerificationError: the networks do not correspond, inputs have the wrong shape, labels are
            malformed, a law or device is unknown or absent. A bound that cannot be certified (an O pair whose
            input is not provably >= 0, an L pair not linear on the box) is no error: the report says so.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from ticketsolver import BuildConfig, VerifyConfig, build_ticket
        >>> _ = torch.manual_seed(0)
        >>> f = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> g = build_ticket(f, BuildConfig(n=12, input_domain=(0, 1)), input_shape=(3,)).to_module()
        >>> report = verify_networks(f, g, VerifyConfig(input_box=(0, 1), n_random=64), input_shape=(3,))
        >>> report.input_box["source"], report.sections["random"]["float32"].n_inputs
        ('declared', 64)
        >>> report.sections["random"]["float64"].max_abs_error <= report.certified.max_bound
        True
    """
    if not isinstance(config, VerifyConfig):
        raise ConfigError(
            f"config must be a VerifyConfig, got {type(config).__name__}; e.g. VerifyConfig(n_random=512)"
        )
    begin = time.perf_counter()
    seconds: dict[str, float] = {}
    shape = _check_shape(input_shape)
    dtypes, seed = config.dtypes, config.seed
    n_random, batch_size = config.n_random, config.batch_size
    worst_case_starts, worst_case_steps = config.worst_case_starts, config.worst_case_steps
    validate_networks(target, pruned)
    data_x, data_y = _check_data(data, shape)
    lo, hi, box_info = _make_box(config.input_box, data_x, shape, box_source, random_law)
    law = box_info["law_name"]
    dev = _resolve_device(device)

    sections: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    if data_x is not None:
        sections["data"] = (data_x, data_y)
    if n_random > 0:
        sections["random"] = (sample_inputs(lo, hi, n_random, shape, seed, law), None)
    seconds["setup"] = time.perf_counter() - begin

    n_batches = sum(-(-x.shape[0] // batch_size) for x, _ in sections.values())
    units = len(dtypes) * (n_batches + (1 if worst_case_starts else 0)) + (1 if config.certify else 0)
    done = 0

    def tick(step: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(step, min(1.0, done / max(units, 1)))

    report = Report(
        device=str(dev),
        device_note=_device_note(dev),
        dtypes=list(dtypes),
        input_shape=list(shape),
        input_box=box_info,
        seed=seed,
        torch_version=torch.__version__,
    )
    with _ieee_float32(dev):
        if config.certify:
            # first: it is cheap, and it validates every pair's effective layer before the long part
            step_begin = time.perf_counter()
            report.certified = certify_bound(
                target, pruned, (lo, hi), input_shape=shape, device=dev, forward_dtypes=tuple(dtypes)
            )
            seconds["certified"] = time.perf_counter() - step_begin
            tick("certified")
        for name in dtypes:
            dtype = _DTYPES[name]
            f = _copy_to(target, dev, dtype)
            g = _copy_to(pruned, dev, dtype)
            checker = LayerChecker(f, g)
            per_input: dict[str, torch.Tensor] = {}
            for section, (x_all, y_all) in sections.items():
                step_begin = time.perf_counter()
                comparison = OutputComparison()
                with torch.no_grad():
                    for start in range(0, x_all.shape[0], batch_size):
                        xb = x_all[start : start + batch_size].to(dev, dtype)
                        yb = y_all[start : start + batch_size].to(dev) if y_all is not None else None
                        f_out, g_out = _forward(checker, f, g, xb, shape, config.layer_check_inputs)
                        comparison.update(f_out, g_out, yb)
                        tick(f"{section}/{name}")
                report.sections.setdefault(section, {})[name] = comparison.result()
                per_input[section] = comparison.per_input_abs_error
                seconds[f"{section}/{name}"] = time.perf_counter() - step_begin
            if sections:
                report.layers[name] = checker.result()
            if worst_case_starts:
                step_begin = time.perf_counter()
                starts, kinds = _choose_starts(sections, per_input, worst_case_starts, lo, hi, shape, seed, law)
                with _single_thread_on_cpu(dev):
                    report.worst_case[name] = search_worst_case(
                        f, g, starts, (lo, hi), steps=worst_case_steps, start_kinds=kinds
                    )
                seconds[f"worst_case/{name}"] = time.perf_counter() - step_begin
                tick(f"worst_case/{name}")
            del f, g, checker
    seconds["total"] = time.perf_counter() - begin
    report.seconds = seconds
    return report


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run a block on one CPU thread: the ascent's steps are tiny batches, where thread handoffs cost
    more than they save, and on a busy machine a second spinning thread makes them many times slower."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise VerificationError(f"input_shape must be a tuple of ints, got {input_shape!r}") from exc
    if not shape or any(s < 1 for s in shape):
        raise VerificationError(f"input_shape must be non-empty with positive sizes, got {input_shape!r}")
    return shape


def _check_data(
    data: tuple[torch.Tensor, torch.Tensor | None] | None, shape: tuple[int, ...]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if data is None:
        return None, None
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise VerificationError("data must be a tuple (inputs, labels or None)")
    x, y = data
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise VerificationError("data inputs must be a floating-point tensor")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        raise VerificationError(
            f"data inputs must have shape (N, {', '.join(map(str, shape))}) with N > 0, got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise VerificationError("data inputs contain NaN or infinite values")
    if y is not None:
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise VerificationError("labels must be an integer tensor")
        if tuple(y.shape) != (x.shape[0],):
            raise VerificationError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        y = y.detach().cpu().long()
    # a copy of our own (in its own float dtype: upcasting is exact) that nothing can write into the caller's
    return x.detach().to("cpu", copy=True), y


def _make_box(
    input_box: tuple[float, float] | None,
    data_x: torch.Tensor | None,
    shape: tuple[int, ...],
    box_source: str | None,
    random_law: str | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The box (per-feature lo, hi in float64) and the report's record of it: where it came from, the law
    of the random inputs. Without a box or data, the default box: verification never fails for want of one."""
    if random_law is not None and random_law not in LAWS:
        raise VerificationError(f"unknown random_law {random_law!r}; expected one of {sorted(LAWS)}")
    if input_box is None and data_x is not None:
        lo, hi = data_x.amin(0).double(), data_x.amax(0).double()
        source = SOURCE_DATA
    else:
        if input_box is None:
            input_box, source = default_input_box(), SOURCE_DEFAULT
            random_law = random_law or DEFAULT_LAW
        else:
            source = box_source or SOURCE_DECLARED
        try:
            lo_value, hi_value = input_box
            lo = torch.as_tensor(lo_value, dtype=torch.float64).expand(shape).clone()
            hi = torch.as_tensor(hi_value, dtype=torch.float64).expand(shape).clone()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise VerificationError(f"input_box must be (lo, hi), got {input_box!r}") from exc
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or (lo > hi).any():
        raise VerificationError("the input box must be finite with lo <= hi")
    law = random_law or "uniform"
    info = {
        "source": source,
        "law_name": law,
        "law": LAWS[law],
        "lo_min": float(lo.min()),
        "lo_max": float(lo.max()),
        "hi_min": float(hi.min()),
        "hi_max": float(hi.max()),
    }
    return lo, hi, info


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise VerificationError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VerificationError(f"device {device!r} was asked for but no CUDA device is available")
    return dev


def _device_note(dev: torch.device) -> str:
    if dev.type == "cpu":
        if torch.cuda.is_available():
            return "ran on CPU as requested (a GPU is present)"
        return "ran on CPU: no GPU present"
    if dev.type == "cuda":
        return f"ran on {torch.cuda.get_device_name(dev)} (TF32 off: float32 is IEEE float32)"
    return f"ran on {dev}"


@contextlib.contextmanager
def _ieee_float32(dev: torch.device) -> Iterator[None]:
    """TF32 would make float32 matmuls/convs on Ampere+ GPUs ~1e-3 accurate; verification wants IEEE."""
    if dev.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _copy_to(module: nn.Sequential, dev: torch.device, dtype: torch.dtype) -> nn.Sequential:
    """A deep copy in ``dtype`` on ``dev``, in eval mode, without parameter gradients (never the caller's).

    A ticket materialised with ``torch.nn.utils.prune`` buffers holds ``weight = weight_orig * weight_mask`` as
    a non-leaf tensor, which ``deepcopy`` refuses: the copy gets detached clones of those, and each mask is
    then folded into a plain weight on the copy (same values; the effective layers read ``weight``).
    """
    memo: dict[int, Any] = {}
    for sub in module.modules():
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                derived = getattr(sub, hook._tensor_name)
                memo[id(derived)] = derived.detach().clone()
    clone = copy.deepcopy(module, memo)
    for sub in clone.modules():
        for hook in list(sub._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(sub, hook._tensor_name)
    clone = clone.to(device=dev, dtype=dtype).eval()
    clone.requires_grad_(False)
    for sub in clone.modules():
        if isinstance(sub, nn.ReLU):
            # an in-place ReLU would write into the batch (or a leaf needing gradients in the ascent)
            sub.inplace = False
    return clone


def _forward(
    checker: LayerChecker, f: nn.Module, g: nn.Module, x: torch.Tensor, shape: tuple[int, ...], check_budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x) and g(x); the first ``check_budget`` inputs of a dtype also go through the per-layer check."""
    try:
        take = max(0, min(check_budget - checker.n_inputs, x.shape[0]))
        if take == 0:
            return f(x), g(x)
        f_out = checker.update(x[:take])
        if take < x.shape[0]:
            f_out = torch.cat([f_out, f(x[take:])])
        return f_out, g(x)
    except RuntimeError as exc:
        raise VerificationError(f"the networks do not accept inputs of shape {shape}: {exc}") from exc


def _choose_starts(
    sections: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    per_input: dict[str, torch.Tensor],
    n_starts: int,
    lo: torch.Tensor,
    hi: torch.Tensor,
    shape: tuple[int, ...],
    seed: int,
    law: str,
) -> tuple[torch.Tensor, list[str]]:
    """The data points and random inputs with the largest observed errors, then fresh points of ``law``."""
    chosen: list[torch.Tensor] = []
    kinds: list[str] = []
    budget = {"data": n_starts // 2 if "random" in sections else n_starts, "random": n_starts}
    for section in ("data", "random"):
        if section not in sections:
            continue
        take = min(budget[section], n_starts - len(kinds), sections[section][0].shape[0])
        if take <= 0:
            continue
        top = torch.topk(per_input[section], take).indices
        chosen.append(sections[section][0][top].double())
        kinds += [f"{section}:{int(i)}" for i in top]
    fresh = n_starts - len(kinds)
    if fresh > 0:
        # a stream of its own so that fresh starts never repeat the random section's inputs
        chosen.append(sample_inputs(lo, hi, fresh, shape, seed + 1, law))
        kinds += [f"{law}:{i}" for i in range(fresh)]
    return torch.cat(chosen), kinds

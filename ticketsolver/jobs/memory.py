"""How much memory one item's worker needs: the estimate behind the service's memory admission.

Place in the pipeline: jobs/service. Intake refuses a job whose item alone would exceed
``Limits.memory_budget_bytes`` (:class:`~ticketsolver.jobs.intake.MemoryBudgetError`) and stores each
item's estimate with it; the dispatcher then runs items only while the estimates of the running ones fit
the budget together::

    in_use = sum(task.memory_bytes for task in running_tasks)
    task = store.claim_next_item(memory_budget=limits.memory_budget_bytes, memory_in_use=in_use)

The model, fitted to peak RSS measured by ``benchmarks/memory.py`` (each case a fresh worker process:
import, build with the default BuildConfig, then verify with the default VerifyConfig; peak from
``os.wait4``'s ``ru_maxrss``), on a 2-CPU x86_64 VM with 23.5 GiB RAM, Python 3.11, torch 2.13 (CPU)::

    peak ≈ 464 MiB + n · (28.2 B · largest layer + 9.0 B · all weights)     build
         + 30 KiB · n · sqrt(largest layer)                                  verification (hidden units x batch)

and every estimate is that times :data:`MARGIN` (1.25). Build residuals are within ±40 MiB. The
verification term is an upper envelope of four points, not a fit: it stands for the activations of the
random network's hidden layer (about ``n · sqrt(weights)`` units of a square layer, times the batch).

Measured (MiB; "wide": h -> h -> 10, "deep": four h x h layers; weights = largest layer + the rest)::

    shape  h     n   weights    largest    build peak  build+verify peak   build s
    wide   256   20     68,096     65,536      501          566               3.6
    wide   256   30     68,096     65,536      525                           14.6
    wide   256   40     68,096     65,536      566          859              20.8
    wide   512   20    267,264    262,144      672          947              11.8
    wide   512   30    267,264    262,144      784                           73.9
    wide   512   40    267,264    262,144      801         1320             101.7
    wide   768   20    597,504    589,824      862                           53.6
    wide   768   30    597,504    589,824     1074                          209.1
    wide   768   40    597,504    589,824     1297                          224.8
    wide  1024   20  1,058,816  1,048,576     1236                           78.7
    wide  1024   30  1,058,816  1,048,576     1579                          397.7
    wide  1024   40  1,058,816  1,048,576     1961                          220.0
    deep   512   20  1,048,576    262,144      785                           75.2

A worker's RSS after importing torch and ticketsolver is 229 MiB. Not measured: convolutional targets
(LeNet5 is far below the smallest case here) and networks above ~1M weights per layer; for those the
margin is the only cover.

**Depth L+1** (``build.depth = "L+1"``, docs/design.md section 2.9) holds a random network of ~n² values per target
weight, and its verification runs it in float32 and float64 on batches of 256 (a conv's hidden maps are large), so::

    peak ≈ 464 MiB + 80 B · n² · all weights                                 build and verify    (x 1.25)

an upper envelope of two measurements (``/usr/bin/time -v ticketsolver build MODEL --n 30 --depth L+1 --data ...``, same
machine): LeNet5 (61,706 weights, source 58.5M values) 4,580 MiB peak (74 B per n² · weight), the 64-500-10 MLP (37,510
weights, 33.6M values) 1,683 MiB (38 B).

**Learning a mask** (a job with ``learn``) holds, per random value, the weight, its score, the score's gradient
and momentum and the mask, and regenerates the network at the end; per activation of an example, the forward
and backward tensors of a minibatch and of the test split evaluated at once (up to 1024 examples)::

    peak ≈ 464 MiB + 60 B · random values + 8 B · activations per example · examples at once    (x 1.25)

an upper envelope of these measurements, not a fit (a fresh process each: imports, ``random_network_of``, the
bundled data, one epoch of ``learn_mask`` with the defaults, ``evaluate_task``; same machine, torch on one
thread; "activations" counts the target's per-example module outputs, times the width)::

    network          data          width  random values  peak MiB  estimate (x 1.25) MiB
    MLP 13-8-3       wine            1            128        452      581
    MLP 64-64-10     digits-flat    48        227,328        491      631
    MLP 64-1024²-10  digits-flat     2      4,345,856        750      934
    MLP 64-1024²-10  digits-flat     4     17,080,320       1065     1887
    LeNet5           digits          1         61,470        540      662
    LeNet5           digits          4        971,640        695      959
    LeNet5           digits          8      3,878,640        940     1476
    LeNet5           digits         12      8,721,000       1319     2131
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BASE_BYTES",
    "MARGIN",
    "activations_per_example",
    "estimate_learn_peak_bytes",
    "estimate_peak_bytes",
    "layer_weights",
]

#: a worker's peak before the build's size matters (imports, solver tables, first allocations)
BASE_BYTES = 464 * 1024**2
#: bytes per weight of the largest layer and per unit of n (the layer being solved)
PER_LARGEST_LAYER_WEIGHT = 28.2
#: bytes per weight of the whole target and per unit of n (what the ticket keeps of every layer)
PER_WEIGHT = 9.0
#: bytes per unit of n * sqrt(largest layer) while verifying (the hidden activations of a batch)
PER_VERIFY_UNIT = 30 * 1024
#: depth L+1: bytes per n² · target weight (its random network and two dtypes of it while verifying)
PER_SHALLOW_VALUE = 80
#: every estimate is the fit times this
MARGIN = 1.25
#: learning a mask: bytes per random value (weight, score, gradient, momentum, mask, the regenerated network)
PER_LEARNED_VALUE = 60
#: learning a mask: bytes per activation of an example, per example in a forward pass at once
PER_LEARNED_ACTIVATION = 8


def layer_weights(target: Any) -> list[int]:
    """Weights and biases of each Linear/Conv2d layer of a :class:`~ticketsolver.models.Target` or module (of each
    unit of a :class:`~ticketsolver.graph.GraphTarget`)."""
    from torch import nn

    if hasattr(target, "layers"):  # a Target or a GraphTarget: its own count per layer or unit
        return [count for _, count in target.layers()]
    module = getattr(target, "module", target)
    return [
        int(sum(p.numel() for p in m.parameters())) for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d)
    ]


def estimate_peak_bytes(weights: int | Sequence[int] | Any, n: int, *, verify: bool = True, depth: str = "2L") -> int:
    """Estimated peak RSS of a worker that builds (and verifies) one ticket with this ``n`` at this ``depth``.

    Args:
        weights: weights per layer (a sequence), a target or module (its layers are counted), or one
            number: all weights of the target taken as one layer (an upper bound).
        n: random hidden units per block.
        verify: the item also verifies its ticket (the default of a job).
        depth: ``"2L"`` or ``"L+1"`` (a far wider random network: the L+1 model above, verification included).

    Returns:
        Bytes, rounded up to a whole MiB.

    >>> estimate_peak_bytes([262_144, 2_570], 20) // 1024**2, estimate_peak_bytes(262_144, 40) // 1024**2
    (1189, 1795)
    >>> estimate_peak_bytes([156, 2_416, 48_120, 10_164, 850], 30, depth="L+1") // 1024**2  # LeNet5: 4,580 measured
    5877
    """
    if isinstance(weights, int):
        sizes = [weights]
    elif isinstance(weights, Sequence):
        sizes = [int(w) for w in weights]
    else:
        sizes = layer_weights(weights)
    largest, total = max(sizes, default=0), sum(sizes)
    mib = 1024**2
    if depth == "L+1":
        return int(math.ceil(MARGIN * (BASE_BYTES + PER_SHALLOW_VALUE * n * n * total) / mib) * mib)
    peak = BASE_BYTES + n * (PER_LARGEST_LAYER_WEIGHT * largest + PER_WEIGHT * total)
    if verify:
        peak += PER_VERIFY_UNIT * n * math.sqrt(largest)
    return int(math.ceil(MARGIN * peak / mib) * mib)


def activations_per_example(target: Any) -> int:
    """Values the target's modules output for one example (every step of its normal form, ReLUs included):
    a forward pass of one zero input."""
    import torch

    module, shape = getattr(target, "module", target), tuple(getattr(target, "input_shape", ()))
    x = torch.zeros((1, *shape))
    count = 0
    with torch.no_grad():
        for step in module.children():
            x = step(x)
            count += x.numel()
    return count


def estimate_learn_peak_bytes(random_values: int, activations: int, examples: int) -> int:
    """Estimated peak RSS of a worker that learns a mask (edge-popup or IteRand) and measures its task.

    Args:
        random_values: values of the random network (``RandomNetwork.source_params()``).
        activations: module outputs of one example in the random network (the target's, times the width).
        examples: the most examples in one forward pass (the batch, or the test split evaluated at once).

    Returns:
        Bytes, rounded up to a whole MiB.

    >>> estimate_learn_peak_bytes(3_878_640, 8 * 15_002, 540) // 1024**2  # LeNet5 at width 8 on digits
    1476
    """
    peak = BASE_BYTES + PER_LEARNED_VALUE * random_values + PER_LEARNED_ACTIVATION * activations * examples
    mib = 1024**2
    return int(math.ceil(MARGIN * peak / mib) * mib)

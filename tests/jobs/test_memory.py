"""Memory admission's estimate: it grows with the network and with n, and bounds a real worker's peak."""

from __future__ import annotations

import os
import subprocess
import sys

from torch import nn

from ticketsolver.jobs.memory import BASE_BYTES, estimate_peak_bytes, layer_weights

MiB = 1024**2


def test_the_estimate_grows_with_the_largest_layer_and_with_n():
    small, large = estimate_peak_bytes([100_000], 20), estimate_peak_bytes([1_000_000], 20)
    assert BASE_BYTES < small < large
    assert estimate_peak_bytes([1_000_000], 40) > large
    assert estimate_peak_bytes(1_000_000, 20) == large  # one number: all weights as one layer
    assert estimate_peak_bytes([1_000_000], 20) % MiB == 0


def test_layers_are_counted_from_a_module():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    assert layer_weights(net) == [10 * 20 + 20, 20 * 3 + 3]
    assert estimate_peak_bytes(net, 20) == estimate_peak_bytes([220, 63], 20)


BUILD = """
import resource, sys, torch
from torch import nn
from ticketsolver import build_ticket
from ticketsolver.config import BuildConfig
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
build_ticket(net, BuildConfig(n=int(sys.argv[1])), input_shape=(96,))
# VmHWM is this process's own peak: ru_maxrss would carry over the (large) test process's peak across the exec
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""


def test_the_estimate_bounds_the_peak_of_a_real_build_in_a_fresh_process():
    n = 24
    net = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    child = subprocess.run(
        [sys.executable, "-c", BUILD, str(n)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    peak = int(child.stdout.split()[-1]) * 1024  # VmHWM is in kB
    estimate = estimate_peak_bytes(net, n)
    assert peak <= estimate, f"measured {peak / MiB:.0f} MiB above the estimate {estimate / MiB:.0f} MiB"
    assert estimate < 3 * peak  # and not so loose that it refuses what would fit

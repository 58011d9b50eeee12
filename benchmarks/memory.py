"""Peak memory (RSS) of a worker building one ticket: the measurements behind ticketsolver.jobs.memory.

Each case runs in a fresh subprocess, as a service worker does: import ticketsolver, build the ticket of an
MLP with the default BuildConfig (a pure build, the service's default) and, with ``--verify``, verify it with
the default VerifyConfig. The parent reads the child's peak RSS from ``os.wait4`` (``ru_maxrss``, that child
alone); the child also prints its RSS right after the imports (the base every worker pays).

    python benchmarks/memory.py                  # the table in ticketsolver/jobs/memory.py
    python benchmarks/memory.py --n 20 --widths 256 512 --verify
    python benchmarks/memory.py --json out.json  # the rows, for a new fit

Shapes: ``wide`` is one hidden layer (h -> h -> 10, the largest layer is nearly all weights), ``deep`` is
four h x h layers (the same total weights as a wide net of twice the width, a quarter of it per layer):
together they show whether the peak follows the largest layer or all the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import torch
from torch import nn
from ticketsolver import build_ticket, verify
from ticketsolver.config import BuildConfig, VerifyConfig

shape, width, n, do_verify = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
torch.manual_seed(0)
if shape == "wide":
    net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
else:
    net = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(width, width), nn.ReLU())][:-1])
layers = [m.weight.numel() for m in net if isinstance(m, nn.Linear)]
start = time.perf_counter()
ticket = build_ticket(net, BuildConfig(n=n), input_shape=(width,))
build_s = time.perf_counter() - start
after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
verify_s = None
if do_verify:
    from ticketsolver.models import Target
    start = time.perf_counter()
    verify(Target.from_module(net, (width,), arch="mlp"), ticket, VerifyConfig())
    verify_s = time.perf_counter() - start
print(json.dumps({"layers": layers, "base": base, "after_build": after_build, "build_s": build_s,
                  "verify_s": verify_s}))
"""


def measure(shape: str, width: int, n: int, verify: bool) -> dict[str, object]:
    """One case in a fresh process; returns its row (bytes and seconds). ``os.wait4`` gives the rusage of
    exactly that child (RUSAGE_CHILDREN would be the largest of all children so far)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the measured process
        os.dup2(write, 1)
        os.close(read)
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-c", CHILD, shape, str(width), str(n), "1" if verify else "0"], env)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shape} {width} n={n} failed (exit {os.waitstatus_to_exitcode(status)})")
    row = json.loads(out.strip().splitlines()[-1])
    return {
        "shape": shape,
        "width": width,
        "n": n,
        "weights": sum(row["layers"]),
        "max_layer": max(row["layers"]),
        "peak_bytes": usage.ru_maxrss * 1024,  # Linux: kilobytes
        **row,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20, 30, 40])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 768, 1024], help="wide nets (h -> h -> 10)")
    parser.add_argument("--deep-widths", type=int, nargs="*", default=[512], help="deep nets (4 layers h x h)")
    parser.add_argument("--verify", action="store_true", help="also verify each ticket (default VerifyConfig)")
    parser.add_argument("--json", type=Path, help="write the rows there")
    args = parser.parse_args()

    cases = [("wide", w, n) for w in args.widths for n in args.n] + [
        ("deep", w, n) for w in args.deep_widths for n in args.n
    ]
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(
        f"# {platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, {ram / 1024**3:.1f} GiB RAM, "
        f"Python {platform.python_version()}"
    )
    print(
        f"{'shape':>5} {'width':>5} {'n':>3} {'weights':>9} {'max layer':>9} {'base MB':>8} {'build MB':>8} "
        f"{'peak MB':>8} {'build s':>7} {'verify s':>8}"
    )
    rows = []
    for shape, width, n in cases:
        row = measure(shape, width, n, args.verify)
        rows.append(row)
        verify_s = "" if row["verify_s"] is None else f"{row['verify_s']:.1f}"
        print(
            f"{shape:>5} {width:>5} {n:>3} {row['weights']:>9,} {row['max_layer']:>9,} "
            f"{row['base'] / 2**20:>8.0f} {row['after_build'] / 2**20:>8.0f} {row['peak_bytes'] / 2**20:>8.0f} "
            f"{row['build_s']:>7.1f} {verify_s:>8}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

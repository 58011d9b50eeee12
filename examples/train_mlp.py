"""Train a two-layer MLP and save its state_dict: 64-500-10 on digits, or 13-64-3 on wine.

* ``--dataset digits`` (default): 64 -> 500 -> 10 on the 8x8 digits as 64 features in [0, 1]
  (the papers' 784-500-10 MNIST net, scaled to the data we ship); saved as ``examples/mlp.pt``.
  Inputs are non-negative, so the output-block construction applies to both layers.
* ``--dataset wine``: 13 -> 64 -> 3 on standardised wine features; saved as ``examples/mlp_wine.pt``.
  Inputs are signed, so the first layer needs the input-block construction.

    python examples/train_mlp.py [--dataset digits|wine] [--out PATH] [--epochs N] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ticketsolver.data import load_digits_flat, load_wine_standardized
from ticketsolver.models import MLP, load_target, train_classifier

# dataset -> (loader, layer sizes, default file, epochs, learning rate, batch size)
CONFIGS = {
    "digits": (load_digits_flat, (64, 500, 10), "mlp.pt", 20, 1e-3, 64),
    "wine": (load_wine_standardized, (13, 64, 3), "mlp_wine.pt", 30, 1e-3, 16),
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, save, reload the checkpoint as a ticketsolver target, and print the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="digits")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    load, sizes, filename, epochs, lr, batch_size = CONFIGS[args.dataset]
    out = args.out or Path(__file__).with_name(filename)
    dataset = load(seed=args.seed)
    torch.manual_seed(args.seed)
    model = MLP(sizes)
    metrics = train_classifier(
        model, dataset, epochs=args.epochs or epochs, lr=lr, batch_size=batch_size, seed=args.seed
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)

    target = load_target(out)
    shape = "-".join(map(str, sizes))
    print(
        f"MLP {shape} on {dataset.name}: train accuracy {metrics['train_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['seconds']:.1f} s"
    )
    print(f"saved {out} (arch {target.arch}, input shape {target.input_shape})")
    return metrics


if __name__ == "__main__":
    main()

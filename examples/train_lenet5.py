"""Train LeNet5 on the bundled digits (8x8 upsampled to 28x28) and save its state_dict.

The saved file is a target for ticketsolver: ``ticketsolver build examples/lenet5.pt --n 20``.
Inputs lie in [0, 1], so every layer can use the output-block construction.

    python examples/train_lenet5.py [--out examples/lenet5.pt] [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ticketsolver.data import load_digits_28
from ticketsolver.models import LeNet5, load_target, train_classifier


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, save, reload the checkpoint as a ticketsolver target, and print the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("lenet5.pt"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dataset = load_digits_28(seed=args.seed)
    torch.manual_seed(args.seed)  # the initial weights, so one seed gives one network
    model = LeNet5()
    metrics = train_classifier(
        model, dataset, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)

    target = load_target(args.out)  # proves the file is what `ticketsolver build` will read
    print(
        f"LeNet5 on digits-28: train accuracy {metrics['train_accuracy']:.4f}, "
        f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['seconds']:.1f} s"
    )
    print(f"saved {args.out} (arch {target.arch}, input shape {target.input_shape})")
    return metrics


if __name__ == "__main__":
    main()

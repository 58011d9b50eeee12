"""Train a small CNN with BatchNorm, stride 2 and average pooling, and save it as a torch.export program.

The model has its own ``forward`` (not an ``nn.Sequential``), which is exactly the case ``.pt2`` files are
for: ticketsolver reads the exported ATen graph, folds the BatchNorms and checks that the result is one
chain of supported layers. The batch dimension is exported as dynamic.

    python examples/train_cnn_export.py [--out examples/cnn_bn.pt2] [--epochs 6] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ticketsolver.data import load_digits_28, load_digits_28_signed
from ticketsolver.models import load_target, train_classifier


class SmallCNN(nn.Module):
    """conv(s2)-BN-ReLU, conv(s2)-BN-ReLU, AvgPool2d(2), flatten, Linear: 1x28x28 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)  # 8x14x14
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # 16x7x7
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AvgPool2d(2)  # 16x3x3
        self.fc = nn.Linear(16 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, export (eval mode, dynamic batch), reload as a ticketsolver target, print the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("cnn_bn.pt2"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signed", action="store_true", help="train on the images mapped to [-1, 1] (signed inputs)")
    args = parser.parse_args(argv)

    dataset = load_digits_28_signed(seed=args.seed) if args.signed else load_digits_28(seed=args.seed)
    torch.manual_seed(args.seed)
    model = SmallCNN()
    metrics = train_classifier(model, dataset, epochs=args.epochs, lr=3e-3, batch_size=32, seed=args.seed)

    example = (dataset.x_test[:2],)
    program = torch.export.export(model.eval(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, args.out)

    target = load_target(args.out)
    print(
        f"SmallCNN (BatchNorm, stride 2, AvgPool) on {dataset.name}: train accuracy "
        f"{metrics['train_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}, "
        f"{metrics['seconds']:.1f} s"
    )
    print(f"saved {args.out} (arch {target.arch}, input shape {target.input_shape}, BatchNorm folded)")
    print(target.module)
    return metrics


if __name__ == "__main__":
    main()

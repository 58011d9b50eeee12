"""Train the graph-shaped example targets of issue 9 and save each as a torch.export program (.pt2).

Five networks beyond ticketsolver's chain of supported layers: a small CIFAR-shaped ResNet (skip adds, 1x1
downsample convs, adaptive average pooling), the standard CIFAR ResNet-18 (11.2M weights), a MobileNet-like
depthwise-separable CNN (grouped convs, ReLU6), a small ViT (class token, positional embeddings, attention,
LayerNorm, GELU) and a character-level causal transformer (embedding, nn.TransformerEncoderLayer). Each is
seeded, trained, put in eval mode, exported with a dynamic batch dimension and saved with
``torch.export.save``; the saved file is reloaded and compared with the model at two batch sizes, then
handed to ``ticketsolver.models.load_target``, which captures it as a graph target (``ticketsolver build
MODEL.pt2 --n 30`` builds its ticket).

    python examples/train_graph_models.py --model resnet            # [--out PATH] [--epochs N] [--seed S]
    python examples/train_graph_models.py --model resnet18 --epochs 0   # export untrained (training is slow)
    python examples/train_graph_models.py --model chartransformer   # next-character model on Python docstrings
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.data import Dataset, TextCorpus, load_digits_28, load_digits_32_rgb, load_python_text
from ticketsolver.errors import UnsupportedModuleError
from ticketsolver.models import evaluate_accuracy, load_target, train_classifier

# ---------------------------------------------------------------------------------------------------
# ResNets (CIFAR-shaped: 3x3 stem, no max pooling, 3x32x32 inputs)
# ---------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the skip (a 1x1 stride-s conv + BN where the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """CIFAR ResNet: conv3x3(stem)-BN-ReLU, stages of BasicBlocks (the first block of each later stage has
    stride 2), adaptive average pooling to 1x1, Linear head."""

    def __init__(
        self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (1, 1, 1), num_classes: int = 10
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"one block count per stage width, got widths {widths} and blocks {blocks}")
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            layers = [
                BasicBlock(channels if i == 0 else width, width, 2 if stage > 0 and i == 0 else 1) for i in range(count)
            ]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18(num_classes: int = 10) -> ResNet:
    """The standard CIFAR ResNet-18: widths 64-128-256-512, [2, 2, 2, 2] BasicBlocks, 11,173,962 weights."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), num_classes)


# ---------------------------------------------------------------------------------------------------
# MobileNet-like depthwise-separable CNN (1x28x28)
# ---------------------------------------------------------------------------------------------------


class DepthwiseSeparable(nn.Module):
    """Depthwise conv3x3 (groups = channels)-BN-ReLU6, then pointwise conv1x1-BN-ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.depthwise(x)))
        return F.relu6(self.bn2(self.pointwise(x)))


class MobileNet(nn.Module):
    """conv3x3(s2)-BN-ReLU6, depthwise-separable blocks, adaptive average pooling, Linear: 1x28x28 -> 10."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU6())
        # 14x14 -> 14x14 -> 7x7 -> 7x7: the second block halves the resolution
        self.blocks = nn.Sequential(
            *(DepthwiseSeparable(a, b, 2 if i == 1 else 1) for i, (a, b) in enumerate(pairwise(widths)))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


# ---------------------------------------------------------------------------------------------------
# Vision transformer (1x28x28, 7x7 patches)
# ---------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention: one Linear for q, k, v, ``F.scaled_dot_product_attention``, Linear out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (batch, heads, tokens, dim/heads)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + attention(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (a conv with stride = kernel = patch), class token, learned positions, pre-LN
    transformer blocks, final LayerNorm, Linear head on the class token."""

    def __init__(
        self,
        image_size: int = 28,
        patch: int = 7,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        hidden: int = 64,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.patch_embedding = nn.Conv2d(1, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        tokens = torch.cat([self.class_token.expand(patches.shape[0], -1, -1), patches], dim=1) + self.positions
        return self.head(self.norm(self.blocks(tokens)[:, 0]))


# ---------------------------------------------------------------------------------------------------
# Character-level causal transformer ((batch, context) int64 ids -> (batch, context, vocab) logits)
# ---------------------------------------------------------------------------------------------------


class CharTransformer(nn.Module):
    """Token embedding + learned positions, causal pre-LN ``nn.TransformerEncoderLayer``s (GELU), LayerNorm,
    Linear to the vocabulary. The time length is fixed to ``context`` (the positions' length)."""

    def __init__(
        self, vocab_size: int, context: int = 64, dim: int = 64, heads: int = 4, layers: int = 2, hidden: int = 128
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids) + self.positions
        x = self.encoder(x, mask=self.causal_mask, is_causal=True)
        return self.head(self.norm(x))


def text_windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``ids``: inputs (N, context) and next-character targets (N, context)."""
    count = (len(ids) - 1) // context
    inputs = ids[: count * context].reshape(count, context)
    targets = ids[1 : count * context + 1].reshape(count, context)
    return inputs, targets


@torch.no_grad()
def evaluate_char_model(model: CharTransformer, ids: torch.Tensor, context: int) -> dict[str, float]:
    """Mean next-character cross-entropy (nats) and top-1 accuracy over the non-overlapping windows of ids."""
    inputs, targets = text_windows(ids, context)
    model.eval()
    logits = model(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return {"loss": float(loss), "accuracy": float(accuracy)}


def train_char_model(
    model: CharTransformer,
    corpus: TextCorpus,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """AdamW on next-character cross-entropy over random windows of the training text; leave eval mode.

    One epoch is as many steps as the training text holds ``batch_size`` windows of the model's context, so
    it sees about as many characters as the text has. Window starts come from a generator seeded with ``seed``.
    """
    context = model.positions.shape[1]
    start = time.perf_counter()
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    steps = epochs * max(1, len(corpus.train) // (batch_size * context))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    offsets = torch.arange(context)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(corpus.train) - context, (batch_size, 1), generator=order)
        inputs, targets = corpus.train[starts + offsets], corpus.train[starts + offsets + 1]
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    train = evaluate_char_model(model, corpus.train, context)
    validation = evaluate_char_model(model, corpus.validation, context)
    return {
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "validation_loss": validation["loss"],
        "validation_accuracy": validation["accuracy"],
        "steps": steps,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------
# The recipes, export and the command line
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one example is built and trained."""

    build: Callable[[int], nn.Module]  # the network, initialised from the current torch seed; arg: classes/vocab
    data: Callable[[int], Dataset | TextCorpus]  # the training data for a seed
    epochs: int  # default passes over the training data
    lr: float  # learning rate (Adam for classifiers, AdamW for the character model)
    batch_size: int  # minibatch size
    description: str  # one line for the printout


def _python_text(seed: int) -> TextCorpus:
    return load_python_text()  # one fixed text and split: the seed only changes the model and the windows


RECIPES: dict[str, Recipe] = {
    "resnet": Recipe(
        lambda classes: ResNet(num_classes=classes),
        lambda seed: load_digits_32_rgb(seed=seed),
        8,
        3e-3,
        32,
        "ResNet 16-32-64, one block/stage",
    ),
    "resnet18": Recipe(resnet18, lambda seed: load_digits_32_rgb(seed=seed), 1, 1e-3, 32, "CIFAR ResNet-18"),
    "mobilenet": Recipe(
        lambda classes: MobileNet(num_classes=classes),
        lambda seed: load_digits_28(seed=seed),
        10,
        3e-3,
        32,
        "depthwise-separable CNN 16-32-64-64, ReLU6",
    ),
    "vit": Recipe(
        lambda classes: ViT(num_classes=classes),
        lambda seed: load_digits_28(seed=seed),
        40,
        3e-3,
        32,
        "ViT, 7x7 patches, dim 32, 2 blocks, 4 heads",
    ),
    "chartransformer": Recipe(
        lambda vocab: CharTransformer(vocab),
        _python_text,
        30,
        3e-3,
        32,
        "causal character transformer, context 64, dim 64, 2 layers, 4 heads",
    ),
}


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode with a dynamic batch dimension (dim 0 of ``example``).

    The example's batch must be at least 2: an example of size 1 would be specialised by export.
    """
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def check_round_trip(path: Path, model: nn.Module, inputs: torch.Tensor, batches: Sequence[int] = (3, 5)) -> float:
    """Reload ``path`` with ``torch.export.load`` and return the largest difference from ``model`` over batches.

    Only for files this script wrote: ``torch.export.load`` is not safe on untrusted files (see
    ``ticketsolver/models/checkpoint.py``).
    """
    program = torch.export.load(path).module()
    deviation = 0.0
    with torch.no_grad():
        for batch in batches:
            expected, got = model.eval()(inputs[:batch]), program(inputs[:batch])
            if got.shape != expected.shape:
                raise AssertionError(f"batch {batch}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
            deviation = max(deviation, float((got - expected).abs().max()))
    return deviation


def refusal(path: Path) -> str | None:
    """ticketsolver's refusal of ``path`` (the message of ``load_target``), or None if it loads."""
    try:
        load_target(path)
    except UnsupportedModuleError as error:
        return str(error)
    return None


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, export (eval mode, dynamic batch), check the round trip, show ticketsolver's refusal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, help="default: examples/<model>.pt2")
    parser.add_argument("--epochs", type=int, help="default per model; 0 exports the untrained network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the tensors are small, and on two shared cores torch's thread "
        "barriers stall; a character-model step took 0.05 s with 1 thread, 0.55 s with 2)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.model]
    epochs = recipe.epochs if args.epochs is None else args.epochs
    if epochs < 0:
        parser.error(f"--epochs must be >= 0, got {epochs}")
    out = args.out or Path(__file__).with_name(f"{args.model}.pt2")

    data = recipe.data(args.seed)
    torch.manual_seed(args.seed)  # the initial weights, so one seed gives one network
    if isinstance(data, TextCorpus):
        model = recipe.build(data.vocab_size)
        assert isinstance(model, CharTransformer)
        context = model.positions.shape[1]
        if epochs:
            metrics = train_char_model(model, data, epochs, recipe.lr, recipe.batch_size, args.seed)
        else:
            metrics = {f"validation_{k}": v for k, v in evaluate_char_model(model, data.validation, context).items()}
            metrics["seconds"] = 0.0
        inputs = text_windows(data.validation, context)[0]
        summary = (
            f"validation loss {metrics['validation_loss']:.3f} nats/char, "
            f"next-character accuracy {metrics['validation_accuracy']:.4f} on {data.name}"
        )
    else:
        model = recipe.build(data.num_classes)
        if epochs:
            metrics = train_classifier(model, data, epochs, recipe.lr, recipe.batch_size, args.seed)
        else:
            model.eval()
            metrics = {"test_accuracy": evaluate_accuracy(model, data.x_test, data.y_test), "seconds": 0.0}
        inputs = data.x_test
        summary = f"test accuracy {metrics['test_accuracy']:.4f} on {data.name}"

    program = export_program(model, inputs[:2])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out)
    metrics.update(
        parameters=parameter_count(model),
        epochs=epochs,
        round_trip_deviation=check_round_trip(out, model, inputs),
        refusal=refusal(out),
    )
    print(f"{args.model} ({recipe.description}): {summary}, {epochs} epochs, {metrics['seconds']:.1f} s")
    print(
        f"{metrics['parameters']:,} parameters; saved {out} (dynamic batch), reloaded: max |difference| "
        f"{metrics['round_trip_deviation']:.2e} at batches 3 and 5"
    )
    if metrics["refusal"] is None:
        print("ticketsolver loads it")
    else:
        print(f"ticketsolver refuses it: {metrics['refusal'].split('; supported ops')[0]}")
    return metrics


if __name__ == "__main__":
    main()

"""IteRand's re-randomisation: pruned weights redrawn from later draws of their own stream, entry by entry.

Mask learning's optional second move (Chijiwa et al., NeurIPS 2021, ``--rerand-mode bernoulli``). At each event
every entry that the current top-K mask prunes is redrawn with probability ``rate``; kept entries never change.
An entry's new value is not a fresh anonymous sample but the next draw of its stream: its draw index goes up by
one and it takes the value that entry has in ``layout.tensor(source, name, draw=new_index)``. The ticket stores
those indices (uint8, one per entry, :attr:`LayerLayout.draw_shape`), so ``layout.source_tensors(source, draws)``
regenerates the trained network's weights bit for bit, and ``examined_values = source_params + draws.sum()``
counts every value drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from ticketsolver.config import MAX_RESAMPLE
from ticketsolver.errors import ConfigError
from ticketsolver.learning.scores import MaskedLayer
from ticketsolver.source import RandomSource
from ticketsolver.ticket.layer import LayerLayout

__all__ = ["Rerandomizer"]


class Rerandomizer:
    """Redraws pruned entries of a network's layers and keeps every entry's draw index.

    Args:
        layouts: the layers' units (their streams say where each draw comes from).
        source: the network's random source.
        rate: probability that a pruned entry is redrawn at an event, in (0, 1].
        generator: the seeded generator of the Bernoulli choices.

    Attributes:
        draws: per layer, the uint8 draw index of every entry (weight then bias, C order).
        events: re-randomisations done so far.
    """

    def __init__(
        self, layouts: list[LayerLayout], source: RandomSource, rate: float, generator: torch.Generator
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ConfigError(f"rerand_rate must be in (0, 1], got {rate}")
        self.layouts, self.source, self.rate, self.generator = layouts, source, float(rate), generator
        self.draws = [np.zeros(layout.draw_shape, dtype=np.uint8) for layout in layouts]
        self.events = 0

    def event(self, layers: list[MaskedLayer]) -> int:
        """One re-randomisation of every layer, in place; returns the number of entries redrawn.

        Raises:
            ConfigError: an entry would need draw index 256 (more than 255 events).
        """
        if self.events >= MAX_RESAMPLE:
            raise ConfigError(f"at most {MAX_RESAMPLE} re-randomisations fit in uint8 draw indices")
        self.events += 1
        redrawn = 0
        for layout, layer, draws in zip(self.layouts, layers, self.draws, strict=True):
            redrawn += self._redraw(layout, layer, draws)
        return redrawn

    def _redraw(self, layout: LayerLayout, layer: MaskedLayer, draws: np.ndarray) -> int:
        masks = layer.masks()
        pruned = np.concatenate([(~masks[name]).reshape(-1).numpy() for name in layer.tensor_names()])
        # one Bernoulli trial per entry, kept ones included, so the generator advances by the same amount
        # whatever the mask
        chosen = torch.rand(pruned.shape, generator=self.generator, dtype=torch.float64).numpy() < self.rate
        hit = pruned & chosen
        draws[hit] += 1
        start = 0
        for name, entry in layout.entry_draws(draws).items():
            size = entry.size
            entry_hit = hit[start : start + size]
            start += size
            flat = layer.frozen(name).view(-1)
            new_draws = entry.reshape(-1)[entry_hit]
            for d in np.unique(new_draws).tolist():
                where = np.flatnonzero(entry_hit)[new_draws == d]
                values = layout.tensor(self.source, name, draw=d).reshape(-1)[where]
                with torch.no_grad():
                    flat[torch.from_numpy(where)] = torch.from_numpy(values).to(flat.dtype)
        return int(hit.sum())

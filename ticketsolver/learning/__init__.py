"""Learned-mask tickets: edge-popup and IteRand over a frozen seeded random network.

A stage beside construction: instead of solving subset sums to match a trained target, learn which random
weights to keep for a task. :func:`random_network_of` (a target's architecture, hidden-networks' initialisation)
or :func:`network_of_ticket` (a constructed ticket's random source, optionally its masks as the start) gives the
:class:`RandomNetwork`; :func:`learn_mask` trains one score per weight (keeping the top ``keep`` fraction of each
layer tensor), re-randomises pruned weights for IteRand, and returns a :class:`~ticketsolver.ticket.Ticket` of
layer units that regenerates the learned network bit for bit.
"""

from __future__ import annotations

from ticketsolver.learning.config import LearnConfig
from ticketsolver.learning.network import RandomNetwork, network_for, network_of_ticket, random_network_of
from ticketsolver.learning.train import learn_mask

__all__ = ["LearnConfig", "RandomNetwork", "learn_mask", "network_for", "network_of_ticket", "random_network_of"]

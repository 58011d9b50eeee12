"""Construction: the pruned pair of random layers that replaces each target layer."""

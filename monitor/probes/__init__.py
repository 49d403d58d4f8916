"""Probes: statistics computed as device tensors (torch), never read on the host.

The layer index, the watched parameters, norms and activation records, the forward hooks of a
sampled step, its per-parameter table, the attention probe, the one host copy and the one
all-gather, and the initialisation's weight audit.
"""

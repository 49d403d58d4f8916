"""The ONE device-to-host transfer of a sampled step, laid out by name.

Every figure a sampled step computes on the device is added under its name (a
``records.columns.TransferPart``, which the packing reads by); they travel
concatenated in one tensor, copied to the host once (a single sync on an accelerator), and
come back as float64 numpy arrays of their own shapes::

    layout = TransferLayout()
    layout.add(TransferPart.LAYER_GRAD_NORM, grad_norms)   # [n_layers]
    layout.add(TransferPart.ACTIVATION, records)          # [n_layers, fields]
    host = layout.to_host()
    host[TransferPart.LAYER_GRAD_NORM]                    # numpy, shape [n_layers]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..records.columns import TransferPart


def host_copy(tensor: torch.Tensor) -> np.ndarray:
    """Copy a device tensor to host memory (a sync on an accelerator) as float64 numpy."""
    return tensor.detach().to("cpu", copy=True).numpy().astype(np.float64)


class TransferLayout:
    """Named device tensors gathered for one copy to the host.

    Raises:
        ValueError: a name added twice.
    """

    def __init__(self) -> None:
        self._tensors: list[torch.Tensor] = []
        self._shapes: dict[TransferPart, tuple[int, ...]] = {}

    def add(self, name: TransferPart, tensor: torch.Tensor) -> None:
        """Send ``tensor`` (any shape, on the device of the others) under ``name``."""
        if name in self._shapes:
            raise ValueError(f"transfer layout: {name!r} added twice")
        self._shapes[name] = tuple(tensor.shape)
        self._tensors.append(tensor.reshape(-1))

    def to_host(self) -> dict[TransferPart, np.ndarray]:
        """One ``torch.cat``, one copy to the host: every tensor added, by name."""
        if not self._tensors:
            return {}
        flat = host_copy(torch.cat(self._tensors))
        host: dict[TransferPart, np.ndarray] = {}
        start = 0
        for name, shape in self._shapes.items():
            size = math.prod(shape)
            host[name] = flat[start:start + size].reshape(shape)
            start += size
        return host

"""The named transfer layout: one copy to the host, every tensor back by name and shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradwatch.monitor.probes.transfer import TransferLayout

pytestmark = pytest.mark.unit


class CountOps(TorchDispatchMode):
    """Counts the ops that run, by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_each_tensor_comes_back_by_name_with_its_shape_and_values():
    torch.manual_seed(0)
    grad_norm = torch.rand(3)
    records = torch.randn(3, 10)
    table = torch.randn(10, 4).T  # not contiguous
    layout = TransferLayout()
    layout.add("layer_grad_norm", grad_norm)
    layout.add("activation", records)
    layout.add("empty", torch.zeros(0, 10))
    layout.add("table", table)
    host = layout.to_host()
    assert list(host) == ["layer_grad_norm", "activation", "empty", "table"]
    for name, tensor in (("layer_grad_norm", grad_norm), ("activation", records),
                         ("table", table)):
        assert host[name].dtype == np.float64
        assert host[name].shape == tuple(tensor.shape)
        np.testing.assert_array_equal(host[name], tensor.double().numpy())
    assert host["empty"].shape == (0, 10)


def test_one_cat_and_one_copy_to_the_host():
    layout = TransferLayout()
    layout.add("a", torch.ones(2))
    layout.add("b", torch.full((2, 2), 3.0))
    with CountOps() as counted:
        host = layout.to_host()
    assert counted.ops.count("cat.default") == 1
    assert counted.ops.count("_to_copy.default") == 1  # float64 comes from numpy, on the host
    assert host["b"].tolist() == [[3.0, 3.0], [3.0, 3.0]]


def test_a_name_added_twice_is_refused():
    layout = TransferLayout()
    layout.add("layer_grad_norm", torch.ones(2))
    with pytest.raises(ValueError, match="layer_grad_norm"):
        layout.add("layer_grad_norm", torch.ones(2))

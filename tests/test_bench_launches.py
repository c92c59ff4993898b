"""bench/bench_launches.py counts the ops that launch kernels: views and allocations do not."""

import importlib.util
from pathlib import Path

import torch

from selectivbench.runio import load_plugins_once

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_launches", ROOT / "bench/bench_launches.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_views_and_allocations_are_not_counted():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    with bench.OpCount() as counter:
        c = (a + b).reshape(12).view(3, 4).t()  # add launches; reshape, view and t are views
        d = torch.empty(5)
        c.sum(), d.fill_(1.0)
        c.reshape(12)  # of a transposed tensor: a real copy
    assert dict(counter.ops) == {"add": 1, "sum": 1, "fill_": 1, "clone": 1}


def test_step_count_is_affine_in_the_layers():
    load_plugins_once([str(ROOT / "tests/toy_arch.py")])
    n1, n2, n3 = (sum(bench.count_step("toy_ema", 16, 64, layers, 64).values()) for layers in (1, 2, 3))
    assert n1 > 0 and n2 - n1 == n3 - n2 > 0

"""Our mixers against the fla 0.6.0 layers the authors used, same weights, bf16 (GPU only).

Runs where CUDA and `fla` are available (a lent H100: see bench/crosscheck_fla.py); skipped on CPU.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="needs fla (flash-linear-attention)"),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.parametrize("arch", ["gla", "delta_net", "gated_delta_net", "gated_delta_product", "mamba2", "mamba"])
def test_matches_fla_layer(arch):
    from crosscheck_fla import check_one

    row = check_one(arch, d=256, T=400, B=2, seed=0)
    assert "error" not in row, row["error"]
    # our bf16 path against our fp32 path (the spec's bf16 tolerances)
    assert row["ours_out"] <= 1e-2 and row["ours_dx"] <= 1e-2
    assert row["ours_dparam_max"] <= 2e-2
    # same weights, same maths: our bf16 output agrees with fla's bf16 output to bf16 noise
    assert row["ours_vs_fla_out"] <= 3e-2, row
    if "fla_dx" in row:
        assert row["ours_vs_fla_dx"] <= 5e-2, row

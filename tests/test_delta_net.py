"""DeltaNet: the gated chunk kernel with log-decay ≡ 0 vs this file's own ungated recurrence."""

import pytest
import torch

from selectivbench.models.delta_net import DeltaNet, chunk_delta_rule, naive_delta_rule
from selectivbench.models.gated_delta_net import naive_gated_delta_rule
from selectivbench.models.layers import RMSNorm
from selectivbench.models.registry import get_mixer
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_parameter_count,
    check_delta_layer_autocast,
    check_delta_layer_bf16,
    check_delta_layer_fp32,
    delta_inputs,
    delta_layer,
    rel_err,
    run_with_grads,
)

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers)
PARAMS_M = {256: 3.614, 384: 7.780, 512: 13.518, 648: 21.358, 768: 29.736,
            960: 46.017, 1024: 52.231, 1152: 65.910, 1296: 83.106}


def inputs(B, H, T, K, V, seed, h0=False):
    x = delta_inputs(B, H, T, K, V, seed=seed, h0=h0)
    del x["g"]
    return x


SHAPES = [  # (B, H, T, K, V, chunk, initial state)
    (1, 1, 1, 16, 16, 64, True),
    (2, 3, 50, 16, 32, 64, False),
    (2, 2, 100, 32, 48, 32, True),
    (1, 4, 200, 32, 64, 64, False),
]


@pytest.mark.parametrize("inverse", ["solve", "doubling"])
@pytest.mark.parametrize("shape", SHAPES)
def test_chunk_matches_naive_fp32(shape, inverse):
    B, H, T, K, V, C, h0 = shape
    x = inputs(B, H, T, K, V, seed=T, h0=h0)
    ref = run_with_grads(naive_delta_rule, x)
    got = run_with_grads(chunk_delta_rule, x, {n: torch.float32 for n in x}, chunk_size=C, inverse=inverse)
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_chunk_matches_naive_bf16_inputs(shape):
    B, H, T, K, V, C, h0 = shape
    x = inputs(B, H, T, K, V, seed=T + 1, h0=h0)
    for n in ("q", "k", "v"):
        x[n] = x[n].bfloat16().double()
    ref = run_with_grads(naive_delta_rule, x)
    dtypes = {"q": torch.bfloat16, "k": torch.bfloat16, "v": torch.bfloat16,
              "beta": torch.float32, "initial_state": torch.float32}
    got = run_with_grads(chunk_delta_rule, x, dtypes, chunk_size=C)
    assert_all_close(got, ref, 1e-2, tols={"dbeta": 2e-2}, zero_atol=1e-5)


def test_naive_is_the_gated_rule_without_decay():
    """Ties the two references together: g ≡ 0 in the gated recurrence is the delta rule."""
    x = delta_inputs(2, 2, 40, 8, 12, seed=9, h0=True)
    o, S = naive_delta_rule(x["q"], x["k"], x["v"], x["beta"], initial_state=x["initial_state"])
    o_g, S_g = naive_gated_delta_rule(x["q"], x["k"], x["v"], torch.zeros_like(x["g"]), x["beta"],
                                      initial_state=x["initial_state"])
    assert torch.allclose(o, o_g, rtol=1e-13, atol=1e-13) and torch.allclose(S, S_g, rtol=1e-13, atol=1e-13)


def test_chunk_size_invariance():
    x = {n: t.float() for n, t in inputs(2, 2, 100, 16, 32, seed=5, h0=True).items()}
    outs = {C: chunk_delta_rule(**x, chunk_size=C) for C in (16, 32, 64)}
    for C in (32, 64):
        assert rel_err(outs[C][0], outs[16][0]) <= 1e-5 and rel_err(outs[C][1], outs[16][1]) <= 1e-5


@pytest.mark.parametrize("beta", [1e-7, 1.0 - 1e-7])
def test_extreme_beta(beta):
    """β → 0 (state frozen) and β → 1 (full overwrite along k): finite and exact vs naive."""
    x = inputs(2, 2, 150, 16, 32, seed=11, h0=True)
    x["beta"] = torch.full_like(x["beta"], beta)
    ref = run_with_grads(naive_delta_rule, x)
    got = run_with_grads(chunk_delta_rule, x, {n: torch.float32 for n in x}, chunk_size=64)
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


@pytest.mark.parametrize("T", [1, 45, 130])
def test_layer_chunk_matches_naive_fp32(T):
    check_delta_layer_fp32(DeltaNet, T)


def test_layer_chunk_matches_naive_bf16():
    check_delta_layer_bf16(DeltaNet, gate_params=("b_proj.weight",))


def test_layer_under_autocast_bf16():
    check_delta_layer_autocast(DeltaNet)


def test_layer_causal_and_right_padding():
    assert_causal_and_padding_invariant(delta_layer(DeltaNet, chunk_size=32), d=32, T=70,
                                        cuts=(0, 31, 32, 50), pads=(1, 23, 64))


def test_layer_structure():
    """fla DeltaNet as used: plain per-head RMSNorm (no output gate, no decay), bias-free projections."""
    layer = DeltaNet(d_model=48, n_head=4)
    assert get_mixer("delta_net") is DeltaNet
    assert type(layer.o_norm) is RMSNorm and layer.o_norm.weight.shape == (24,)
    assert not hasattr(layer, "g_proj") and not hasattr(layer, "A_log")
    assert all(m.bias is None for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer.state_size() == 4 * 12 * 24
    layer.mode = "fused"
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(1, 3, 48))


@pytest.mark.parametrize("feat", sorted(PARAMS_M))
def test_parameter_count_matches_spec(feat):
    assert_parameter_count("delta_net", feat, PARAMS_M[feat])

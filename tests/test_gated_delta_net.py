"""Gated DeltaNet: chunked WY kernel vs the float64 step-by-step recurrence, layer, parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from selectivbench.models.gated_delta_net import (
    GatedDeltaNet,
    chunk_gated_delta_rule,
    naive_gated_delta_rule,
    unit_lower_inverse,
)
from selectivbench.models.registry import get_mixer
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_finite_grads,
    assert_parameter_count,
    check_delta_layer_autocast,
    check_delta_layer_bf16,
    check_delta_layer_fp32,
    delta_inputs,
    delta_layer,
    rel_err,
    run_with_grads,
    seeded_randn,
)

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers)
PARAMS_M = {256: 4.671, 384: 10.151, 512: 17.729, 648: 28.118, 768: 39.223,
            960: 60.824, 1024: 69.074, 1152: 87.291, 1296: 110.146}


GATE_GRADS = {"dg", "dbeta"}

# (B, H, T, K, V, chunk, initial state): T = 1, T < C, T not a multiple of C, several heads
SHAPES = [
    (1, 1, 1, 16, 16, 64, False),
    (2, 3, 37, 16, 32, 64, True),
    (2, 2, 63, 32, 48, 32, False),
    (1, 4, 200, 32, 64, 64, True),
    (2, 2, 130, 24, 40, 16, True),
]


@pytest.mark.parametrize("inverse", ["solve", "doubling"])
@pytest.mark.parametrize("shape", SHAPES)
def test_chunk_matches_naive_fp32(shape, inverse):
    B, H, T, K, V, C, h0 = shape
    x = delta_inputs(B, H, T, K, V, seed=T + H, h0=h0)
    ref = run_with_grads(naive_gated_delta_rule, x)
    got = run_with_grads(chunk_gated_delta_rule, x, {n: torch.float32 for n in x}, chunk_size=C, inverse=inverse)
    assert got["o"].dtype == torch.float32 and got["S"].dtype == torch.float32
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_chunk_matches_naive_bf16_inputs(shape):
    """bf16 q/k/v (matmul operands), fp32 gates and state, vs float64 on the same rounded values."""
    B, H, T, K, V, C, h0 = shape
    x = delta_inputs(B, H, T, K, V, seed=T, h0=h0)
    for n in ("q", "k", "v"):
        x[n] = x[n].bfloat16().double()
    ref = run_with_grads(naive_gated_delta_rule, x)
    dtypes = {"q": torch.bfloat16, "k": torch.bfloat16, "v": torch.bfloat16,
              "g": torch.float32, "beta": torch.float32, "initial_state": torch.float32}
    got = run_with_grads(chunk_gated_delta_rule, x, dtypes, chunk_size=C)
    assert got["o"].dtype == torch.bfloat16
    assert_all_close(got, ref, 1e-2, tols=dict.fromkeys(GATE_GRADS, 2e-2), zero_atol=1e-5)


def test_float64_chunk_is_exact():
    """In float64 the WY algebra must agree with the recurrence to rounding (spec: ~1e-15)."""
    x = delta_inputs(2, 2, 150, 16, 24, seed=3, h0=True)
    o_ref, S_ref = naive_gated_delta_rule(**x)
    o, S = chunk_gated_delta_rule(**x, chunk_size=32)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(S, S_ref) < 1e-12


def test_chunk_size_invariance():
    x = {n: t.float() for n, t in delta_inputs(2, 2, 100, 16, 32, seed=5, h0=True).items()}
    outs = {C: chunk_gated_delta_rule(**x, chunk_size=C) for C in (16, 32, 64)}
    for C in (32, 64):
        assert rel_err(outs[C][0], outs[16][0]) <= 1e-5
        assert rel_err(outs[C][1], outs[16][1]) <= 1e-5


def test_unit_lower_inverse_methods_agree():
    gen = torch.Generator().manual_seed(0)
    for C in (16, 48, 64):  # 48: ⌈log2 C⌉ doubling levels for a non-power of two
        A = (torch.randn(3, C, C, generator=gen, dtype=torch.float64) * 0.3).tril(-1)
        eye = torch.eye(C, dtype=torch.float64)
        for method in ("solve", "doubling"):
            inv = unit_lower_inverse(A, method)
            assert torch.allclose(inv @ (eye + A), eye.expand_as(A), atol=1e-10), (C, method)
    with pytest.raises(ValueError, match="inverse"):
        unit_lower_inverse(A, "lu")


@pytest.mark.parametrize(
    "case",
    [
        dict(g=-30.0),  # decay ≈ 0: α = e^{-30} every step (chunk-local cumsum reaches −1920)
        dict(g=0.0),  # no decay (α = 1): must equal the plain delta rule's behaviour
        dict(g=-1e-7),  # α ≈ 1
        dict(beta=1e-7),  # β → 0: the state barely changes
        dict(beta=1.0 - 1e-7),  # β → 1: full overwrite along k
    ],
)
def test_extreme_gates(case):
    x = delta_inputs(2, 2, 150, 16, 32, seed=11, h0=True)
    for name, value in case.items():
        x[name] = torch.full_like(x[name], value)
    ref = run_with_grads(naive_gated_delta_rule, x)
    got = run_with_grads(chunk_gated_delta_rule, x, {n: torch.float32 for n in x}, chunk_size=64)
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


def test_bad_arguments():
    x = {n: t.float() for n, t in delta_inputs(1, 1, 12, 8, 8, seed=0).items() if t is not None}
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=0)
    with pytest.raises(ValueError, match="q's length"):
        chunk_gated_delta_rule(x["q"][:, :, :5], x["k"], x["v"], x["g"], x["beta"])
    with pytest.raises(ValueError, match="inverse"):
        chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], inverse="lu")


# ----------------------------------------------------------------------------- layer


@pytest.mark.parametrize("T", [1, 45, 130])
def test_layer_chunk_matches_naive_fp32(T):
    check_delta_layer_fp32(GatedDeltaNet, T)


def test_layer_chunk_matches_naive_bf16():
    check_delta_layer_bf16(GatedDeltaNet, gate_params=("a_proj.weight", "b_proj.weight"))


def test_layer_under_autocast_bf16():
    check_delta_layer_autocast(GatedDeltaNet)


def test_layer_causal_and_right_padding():
    assert_causal_and_padding_invariant(delta_layer(GatedDeltaNet, chunk_size=16), d=32, T=70,
                                        cuts=(0, 15, 16, 40, 68), pads=(1, 23, 64))


def test_layer_extreme_decay_is_finite():
    layer = delta_layer(GatedDeltaNet)
    with torch.no_grad():
        layer.A_log.fill_(math.log(1e4))  # a ≈ −1e4·softplus(·): decay ≈ 0 every step
    x = torch.randn(2, 100, 32)
    assert_finite_grads(layer, x, seeded_randn(x.shape, 0))


def test_layer_mode_and_state_size():
    layer = GatedDeltaNet(d_model=48, n_head=4)
    assert get_mixer("gated_delta_net") is GatedDeltaNet
    assert layer.state_size() == 4 * 12 * 24
    layer.mode = "recurrent"
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(1, 3, 48))


def test_fla_init():
    """A = exp(A_log) ~ U(0, 16), softplus(dt_bias) log-uniform in [1e-3, 1e-1], bias-free projections."""
    torch.manual_seed(0)
    layer = GatedDeltaNet(d_model=512, n_head=256)
    A, dt = layer.A_log.exp(), F.softplus(layer.dt_bias)
    assert ((A > 0) & (A < 16)).all() and A.mean().item() == pytest.approx(8, abs=1.5)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert dt.log().mean().item() == pytest.approx(math.log(1e-2), abs=0.4)
    assert all(m.bias is None for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay


@pytest.mark.parametrize("feat", sorted(PARAMS_M))
def test_parameter_count_matches_spec(feat):
    assert_parameter_count("gated_delta_net", feat, PARAMS_M[feat])

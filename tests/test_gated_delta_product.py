"""Gated DeltaProduct: the gated kernel on the interleaved sequence vs a token/sub-step loop."""

import pytest
import torch
import torch.nn.functional as F

from selectivbench.models.gated_delta_net import chunk_gated_delta_rule
from selectivbench.models.gated_delta_product import (
    GatedDeltaProduct,
    chunk_gated_delta_product,
    naive_gated_delta_product,
)
from selectivbench.models.layers import l2norm
from selectivbench.models.registry import get_mixer
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_finite_grads,
    assert_parameter_count,
    check_delta_layer_autocast,
    check_delta_layer_bf16,
    check_delta_layer_fp32,
    delta_layer,
    rel_err,
    run_with_grads,
    seeded_randn,
)

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers)
PARAMS_M = {256: 9.488, 384: 20.915, 512: 36.800, 648: 58.662, 768: 82.059,
            960: 127.640, 1024: 145.063, 1152: 183.617, 1296: 231.950}


def inputs(B, H, T, K, V, seed, n_h=4, h0=False):
    """float64: q (B,H,T,K), k (B,H,T,n_h,K), v (B,H,T,n_h,V), g (B,H,T), β ∈ (0, 2) (B,H,T,n_h)."""
    gen = torch.Generator().manual_seed(seed)
    d = dict(dtype=torch.float64)
    x = dict(
        q=l2norm(torch.randn(B, H, T, K, generator=gen, **d)),
        k=l2norm(torch.randn(B, H, T, n_h, K, generator=gen, **d)),
        v=torch.randn(B, H, T, n_h, V, generator=gen, **d),
        g=F.logsigmoid(torch.randn(B, H, T, generator=gen, **d)) * 0.3,
        beta=2 * torch.rand(B, H, T, n_h, generator=gen, **d),
    )
    x["initial_state"] = torch.randn(B, H, K, V, generator=gen, **d) if h0 else None
    return x


SHAPES = [  # (B, H, T tokens, K, V, chunk over sub-steps, n_h, initial state)
    (1, 1, 1, 16, 16, 64, 4, False),
    (2, 2, 13, 16, 32, 64, 4, True),  # 52 sub-steps < one chunk
    (2, 3, 50, 16, 24, 32, 4, False),  # 200 sub-steps: not a multiple of 32
    (1, 2, 77, 32, 48, 64, 4, True),
    (2, 2, 40, 16, 16, 18, 3, True),  # n_h = 3, chunk of 6 tokens
]


@pytest.mark.parametrize("shape", SHAPES)
def test_chunk_matches_naive_fp32(shape):
    B, H, T, K, V, C, n_h, h0 = shape
    x = inputs(B, H, T, K, V, seed=T, n_h=n_h, h0=h0)
    ref = run_with_grads(naive_gated_delta_product, x)
    got = run_with_grads(chunk_gated_delta_product, x, {n: torch.float32 for n in x}, chunk_size=C)
    assert got["o"].shape == (B, H, T, V)
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_chunk_matches_naive_bf16_inputs(shape):
    B, H, T, K, V, C, n_h, h0 = shape
    x = inputs(B, H, T, K, V, seed=T + 1, n_h=n_h, h0=h0)
    for n in ("q", "k", "v"):
        x[n] = x[n].bfloat16().double()
    ref = run_with_grads(naive_gated_delta_product, x)
    dtypes = {"q": torch.bfloat16, "k": torch.bfloat16, "v": torch.bfloat16,
              "g": torch.float32, "beta": torch.float32, "initial_state": torch.float32}
    got = run_with_grads(chunk_gated_delta_product, x, dtypes, chunk_size=C)
    assert_all_close(got, ref, 1e-2, tols={"dg": 2e-2, "dbeta": 2e-2}, zero_atol=1e-5)


def test_chunk_size_invariance():
    x = {n: t.float() for n, t in inputs(2, 2, 60, 16, 32, seed=5, h0=True).items()}
    outs = {C: chunk_gated_delta_product(**x, chunk_size=C) for C in (16, 32, 64)}
    for C in (32, 64):
        assert rel_err(outs[C][0], outs[16][0]) <= 1e-5 and rel_err(outs[C][1], outs[16][1]) <= 1e-5


def test_query_stride_equals_zero_query_interleaving():
    """Reading q after every n_h-th step (what the kernel does) = fla's zero-padded interleaved q."""
    B, H, T, K, V, n_h = 2, 2, 30, 16, 24, 4
    x = {n: t.float() for n, t in inputs(B, H, T, K, V, seed=2, h0=True).items()}
    o, S = chunk_gated_delta_product(**x, chunk_size=32)
    q_seq = F.pad(x["q"].unsqueeze(3), (0, 0, n_h - 1, 0)).reshape(B, H, T * n_h, K)  # q at j = n_h only
    g_seq = F.pad(x["g"].unsqueeze(-1), (0, n_h - 1)).reshape(B, H, T * n_h)  # decay at j = 1 only
    o_seq, S_seq = chunk_gated_delta_rule(q_seq, x["k"].reshape(B, H, T * n_h, K), x["v"].reshape(B, H, T * n_h, V),
                                          g_seq, x["beta"].reshape(B, H, T * n_h), chunk_size=32,
                                          initial_state=x["initial_state"])
    assert rel_err(o, o_seq[:, :, n_h - 1::n_h]) <= 1e-6 and rel_err(S, S_seq) <= 1e-6
    assert o_seq.reshape(B, H, T, n_h, V)[:, :, :, : n_h - 1].abs().max() == 0  # q = 0 rows read nothing


@pytest.mark.parametrize(
    "case",
    [dict(g=-30.0), dict(g=0.0), dict(beta=1e-7), dict(beta=1.0 - 1e-7), dict(beta=2.0 - 1e-7)],
)
def test_extreme_gates(case):
    """Decay ≈ 0 / none, β → 0, β → 1 (projection) and β → 2 (reflection, eigenvalue −1)."""
    x = inputs(2, 2, 40, 16, 32, seed=11, h0=True)
    for name, value in case.items():
        x[name] = torch.full_like(x[name], value)
    ref = run_with_grads(naive_gated_delta_product, x)
    got = run_with_grads(chunk_gated_delta_product, x, {n: torch.float32 for n in x}, chunk_size=64)
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


def test_no_forget_gate_equals_zero_log_decay():
    x = {n: t.float() for n, t in inputs(1, 2, 20, 8, 8, seed=3).items() if t is not None}
    o_none, _ = chunk_gated_delta_product(x["q"], x["k"], x["v"], None, x["beta"], chunk_size=16)
    o_zero, _ = chunk_gated_delta_product(x["q"], x["k"], x["v"], torch.zeros_like(x["g"]), x["beta"], chunk_size=16)
    assert torch.allclose(o_none, o_zero, rtol=0, atol=1e-6)


def test_chunk_must_hold_whole_tokens():
    x = {n: t.float() for n, t in inputs(1, 1, 8, 8, 8, seed=0).items() if t is not None}
    with pytest.raises(ValueError, match="chunk_size=30"):
        chunk_gated_delta_product(x["q"], x["k"], x["v"], x["g"], x["beta"], chunk_size=30)
    with pytest.raises(ValueError, match="num_householder"):
        GatedDeltaProduct(d_model=16, n_head=2, chunk_size=30)


@pytest.mark.parametrize("T", [1, 37])
def test_layer_chunk_matches_naive_fp32(T):
    check_delta_layer_fp32(GatedDeltaProduct, T)


def test_layer_chunk_matches_naive_bf16():
    check_delta_layer_bf16(GatedDeltaProduct, T=60, gate_params=("a_proj.weight", "b_proj.weight"))


def test_layer_under_autocast_bf16():
    check_delta_layer_autocast(GatedDeltaProduct)


def test_layer_causal_and_right_padding():
    assert_causal_and_padding_invariant(delta_layer(GatedDeltaProduct, chunk_size=32), d=32, T=40,
                                        cuts=(0, 7, 8, 30), pads=(1, 23, 64))  # 8 tokens per chunk


def test_layer_structure():
    """fla's GatedDeltaProduct as used: n_h = 4, β = 2·sigmoid ∈ (0, 2), per-sub-step k/v/β channels."""
    torch.manual_seed(0)
    layer = GatedDeltaProduct(d_model=48, n_head=4)
    assert get_mixer("gated_delta_product") is GatedDeltaProduct
    assert layer.num_householder == 4 and layer.allow_neg_eigval
    assert layer.k_proj.out_features == 4 * 48 and layer.v_proj.out_features == 4 * 96
    assert layer.k_conv1d.conv.in_channels == 4 * 48 and layer.b_proj.out_features == 4 * 4
    assert layer.a_proj.out_features == 4 and layer.g_proj.out_features == 96
    assert all(m.bias is None for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer.state_size() == 4 * 12 * 24
    A = layer.A_log.exp()
    assert ((A > 0) & (A < 16)).all()


def test_layer_beta_range():
    """With b_proj saturated the layer must reach β → 2 (neg. eigenvalues) and stay finite."""
    layer = GatedDeltaProduct(d_model=32, n_head=2)
    with torch.no_grad():
        layer.b_proj.weight.fill_(10.0)
    x = torch.rand(2, 40, 32)  # positive inputs: W_b x ≫ 0, β ≈ 2
    assert_finite_grads(layer, x, seeded_randn(x.shape, 0))


@pytest.mark.parametrize("feat", sorted(PARAMS_M))
def test_parameter_count_matches_spec(feat):
    assert_parameter_count("gated_delta_product", feat, PARAMS_M[feat])

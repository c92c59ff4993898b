"""Mamba-2: chunked SSD vs the float64 step-by-step recurrence, layer checks, §10.4 parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from selectivbench.models import get_mixer
from selectivbench.models.mamba2 import Mamba2, chunk_ssd, naive_ssd
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_finite_grads,
    assert_parameter_count,
    chunk_and_naive_grads,
    rel_err,
    rms,
    run_with_grads,
)

# spec SELECTIVBENCH.md §10.4, mamba2 columns (millions, V=41, C=1601, 8 layers): (N=128, N=64)
PARAMS_M = {256: (4.148, 3.880), 384: (8.575, 8.177), 512: (14.575, 14.045), 648: (22.715, 22.046),
            768: (31.343, 30.551), 960: (48.023, 47.035), 1024: (54.369, 53.316),
            1152: (68.390, 67.205), 1296: (85.895, 84.562)}


def random_inputs(b, H, T, P, N, seed, groups=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, H, T, P, generator=gen)
    B, C = torch.randn(b, groups, T, N, generator=gen), torch.randn(b, groups, T, N, generator=gen)
    # a = Δ·A as at init: Δ = softplus(·) around 1e-3…1, A in -[1, 16] per head
    dt = F.softplus(torch.randn(b, H, T, generator=gen) * 2 - 2)
    A = -torch.empty(H, 1).uniform_(1, 16, generator=gen)
    return x.to(dtype), dt * A, B.to(dtype), C.to(dtype)  # log decays stay fp32


def run_both(x, a, B, C, chunk_size):
    """Output "o" and input gradients "dx", "da", "dB", "dC" of chunk_ssd (inputs' dtypes) and of
    the float64 naive recurrence (same upstream grad)."""
    inputs = dict(x=x, a=a, B=B, C=C)
    ref = run_with_grads(naive_ssd, inputs, dict.fromkeys(inputs, torch.float64))
    return run_with_grads(chunk_ssd, inputs, chunk_size=chunk_size), ref


def check_errors(got, ref, x, tol, gate_tol):
    # da is a reverse cumsum of terms of size |Σ_p x·dx| that cancel; when it is tiny (T = 1,
    # strong decay) compare the error with that scale instead of with da itself
    floor = 1e-2 * rms((x.double() * ref["dx"]).sum(-1))
    assert_all_close(got, ref, tol, tols={"da": gate_tol}, floors={"da": floor})


# (b, H, T, P, N, chunk, groups): T = 1, T < chunk, T not a multiple of the chunk, several heads,
# mamba's own chunk 256, per-head B/C (G = H)
SHAPES = [
    (2, 4, 1, 8, 16, 64, 1),
    (1, 3, 37, 8, 16, 64, 1),
    (2, 4, 100, 8, 16, 32, 1),
    (2, 8, 200, 16, 32, 64, 1),
    (1, 2, 200, 9, 12, 256, 1),
    (2, 3, 70, 8, 16, 16, 3),
]


@pytest.mark.parametrize("b,H,T,P,N,L,G", SHAPES)
def test_chunk_matches_naive_fp32(b, H, T, P, N, L, G):
    x, a, B, C = random_inputs(b, H, T, P, N, seed=T, groups=G)
    got, ref = run_both(x, a, B, C, L)
    check_errors(got, ref, x, tol=1e-5, gate_tol=1e-5)


@pytest.mark.parametrize("b,H,T,P,N,L", [(2, 4, 200, 32, 64, 64), (1, 2, 45, 16, 32, 32)])
def test_chunk_matches_naive_bf16(b, H, T, P, N, L):
    x, a, B, C = random_inputs(b, H, T, P, N, seed=T, dtype=torch.bfloat16)
    got, ref = run_both(x, a, B, C, L)
    assert got["o"].dtype == torch.bfloat16 and got["dx"].dtype == torch.bfloat16
    check_errors(got, ref, x, tol=1e-2, gate_tol=2e-2)


def test_chunk_size_invariance():
    x, a, B, C = random_inputs(2, 4, 150, 8, 16, seed=3)
    outs = [chunk_ssd(x, a, B, C, chunk_size=L) for L in (16, 32, 64, 256)]
    for o in outs[:-1]:
        assert rel_err(o, outs[-1]) <= 1e-6


@pytest.mark.parametrize("decay", ["minus1000", "zero", "mixed", "large_dt_A"])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_extreme_decays_finite_and_accurate(decay, scale):
    b, H, T, P, N = 2, 3, 100, 8, 16
    x, _, B, C = random_inputs(b, H, T, P, N, seed=5)
    gen = torch.Generator().manual_seed(6)
    a = {
        "minus1000": torch.full((b, H, T), -1000.0),  # Δ·A huge: forget ≈ 0 every step
        "zero": torch.zeros(b, H, T),  # Δ -> 0: no decay at all
        "mixed": torch.where(torch.rand(b, H, T, generator=gen) < 0.5, -500.0, -1e-4),
        "large_dt_A": -16 * F.softplus(3 * torch.randn(b, H, T, generator=gen) + 2),  # Δ up to ~15, A = -16
    }[decay]
    got, ref = run_both(x * scale, a, B * scale, C * scale, chunk_size=64)
    # chunk cumsums reach |b| ~ 1e4 in the mixed case; their differences carry ~1e-5 relative
    # error (ulp of the decays, ARCHITECTURES.md §5), hence 1e-4 here
    check_errors(got, ref, x * scale, tol=1e-4, gate_tol=1e-4)


def make_layer(d=32, n_head=4, d_state=16, chunk_size=16, seed=0):
    torch.manual_seed(seed)
    return Mamba2(d_model=d, n_head=n_head, d_state=d_state, chunk_size=chunk_size)


@pytest.mark.parametrize("T", [1, 70])
def test_layer_chunk_matches_naive_fp32(T):
    layer = make_layer()
    with torch.no_grad():
        layer.D.uniform_(0.5, 1.5)  # distinct per head, so a head mix-up shows
    u = torch.randn(2, T, 32)
    dy = torch.randn(2, T, 32, dtype=torch.float64)
    got, ref = chunk_and_naive_grads(layer, u, dy)
    assert len(ref) == 2 + 8  # y, dx and the 8 parameter tensors
    # at T = 1 the decay has no effect (the state starts at 0): the exact A_log gradient is 0 and
    # the chunked one is rounding noise, judged against the size of the other gradients
    assert_all_close(got, ref, 1e-5, floors={"A_log": 1e-2 * rms(ref["dt_bias"])})


def spec_mamba2_forward(layer, u):
    """ARCHITECTURES.md §2.6 written out step by step in float64, from the layer's parameters."""
    p = {n: t.detach().double() for n, t in layer.named_parameters()}
    b, T, _ = u.shape
    di, N, H, P = layer.d_inner, layer.d_state, layer.nheads, layer.headdim
    zxbcdt = u.double() @ p["in_proj.weight"].T
    z, xBC, dt = zxbcdt[..., :di], zxbcdt[..., di : 2 * di + 2 * N], zxbcdt[..., 2 * di + 2 * N :]
    conv = F.conv1d(xBC.transpose(1, 2), p["conv1d.conv.weight"], p["conv1d.conv.bias"], padding=3, groups=di + 2 * N)
    xBC = F.silu(conv[..., :T]).transpose(1, 2)
    x, Bm, Cm = xBC[..., :di].reshape(b, T, H, P), xBC[..., di : di + N], xBC[..., di + N :]
    delta = F.softplus(dt + p["dt_bias"])  # (b, T, H)
    A = -p["A_log"].exp()
    h = torch.zeros(b, H, P, N, dtype=torch.float64)
    ys = []
    for t in range(T):
        h = torch.exp(delta[:, t, :, None, None] * A[:, None, None]) * h + torch.einsum(
            "bh,bhp,bn->bhpn", delta[:, t], x[:, t], Bm[:, t]
        )
        ys.append(torch.einsum("bhpn,bn->bhp", h, Cm[:, t]) + p["D"][:, None] * x[:, t])
    y = torch.stack(ys, 1).reshape(b, T, di) * F.silu(z)  # gate first, then RMS over all d_inner
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    return y @ p["out_proj.weight"].T


def test_layer_matches_spec_formula():
    layer = make_layer()
    with torch.no_grad():
        layer.D.uniform_(0.5, 1.5)
        layer.norm.weight.uniform_(0.5, 1.5)
    u = torch.randn(2, 40, 32)
    assert rel_err(layer(u), spec_mamba2_forward(layer, u)) <= 1e-5


def test_layer_chunk_matches_naive_bf16_autocast():
    layer = make_layer()
    u = torch.randn(2, 70, 32)
    dy = torch.randn(2, 70, 32, dtype=torch.float64)
    got, ref = chunk_and_naive_grads(layer, u, dy, autocast=True)
    assert got["y"].dtype == torch.bfloat16
    # bf16 projections and conv add their own rounding on top of the kernel's (≈1e-2 measured)
    assert_all_close(got, ref, 3e-2)


def test_layer_is_causal_and_right_padding_is_harmless():
    assert_causal_and_padding_invariant(make_layer(chunk_size=16), d=32, T=50, cuts=(0, 15, 16, 23, 48),
                                        pads=(30,), causal_tol=(0, 1e-6))  # chunk edges and middles


def test_layer_extreme_decays_finite():
    layer = make_layer()
    u = 30 * torch.randn(2, 40, 32)
    for dt_bias, A_log in ((50.0, math.log(16)), (-50.0, 0.0)):  # Δ·A ≈ -800 per step / Δ ≈ 0
        with torch.no_grad():
            layer.dt_bias.fill_(dt_bias)
            layer.A_log.fill_(A_log)
        assert_finite_grads(layer, u, torch.randn(2, 40, 32))


def test_layer_shapes_state_size_and_init():
    d, H, N = 64, 4, 32
    torch.manual_seed(1)
    layer = Mamba2(d_model=d, n_head=H, d_state=N)
    assert (layer.d_inner, layer.headdim, layer.nheads) == (128, 16, 8)  # 2H SSD heads of size d/H
    assert layer.in_proj.weight.shape == (2 * 128 + 2 * N + 8, d)  # [z | x | B | C | dt]
    assert layer.conv1d.conv.weight.shape == (128 + 2 * N, 1, 4) and layer.conv1d.conv.bias is not None
    assert layer.state_size() == 8 * 16 * N
    assert Mamba2.default_d_state == 128 and layer.chunk_size == Mamba2.default_chunk_size
    assert get_mixer("mamba2") is Mamba2
    # mamba_ssm inits: Δ = softplus(dt_bias) log-uniform in [1e-3, 0.1], A = exp(A_log) in [1, 16], D = 1
    dt = F.softplus(layer.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    A = layer.A_log.exp()
    assert ((A >= 1) & (A <= 16)).all() and A.std() > 0
    assert torch.equal(layer.D, torch.ones(8))
    assert torch.equal(layer.norm.weight, torch.ones(128))
    layer.mode = "recurrent"
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(1, 3, d))


@pytest.mark.parametrize("feat", sorted(PARAMS_M))
def test_parameter_counts_match_spec(feat):
    for N, expected in zip((128, 64), PARAMS_M[feat]):
        net = assert_parameter_count("mamba2", feat, expected, d_state=N)
        assert net.state_size_per_layer() == 2 * feat * N  # n_heads · P · N = 2H · d/H · N

"""Mamba-1: chunked selective scan vs the step-by-step float64 reference, the layer, its inits
and parameter counts (SELECTIVBENCH §10.4; ARCHITECTURES §2.7, §3.6, §5)."""

import math

import pytest
import torch
import torch.nn.functional as F

from selectivbench.models import RecNet, available, get_mixer
from selectivbench.models.mamba import Mamba, chunk_selective_scan, naive_selective_scan
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_close,
    assert_finite_grads,
    assert_parameter_count,
    chunk_and_naive_grads,
    run_with_grads,
    seeded_randn,
)

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers)
PARAMS_M = {
    128: {256: 5.305, 384: 10.414, 512: 17.161, 648: 26.136, 768: 35.572,
          960: 53.680, 1024: 60.535, 1152: 75.475, 1296: 94.240},
    64: {256: 4.518, 384: 9.234, 512: 15.588, 648: 24.145, 768: 33.212,
         960: 50.731, 1024: 57.390, 1152: 71.936, 1296: 90.259},
}
GATES = ("ddelta", "dA")


def scan_inputs(B, T, D, N, seed, h0=True):
    """float64 kernel inputs shaped like the layer's: delta = softplus(.), A = -(1..N) * U(0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    x = {
        "u": torch.randn(B, T, D, generator=g, dtype=torch.float64),
        "delta": F.softplus(torch.randn(B, T, D, generator=g, dtype=torch.float64) - 1.0),
        "A": -torch.arange(1, N + 1, dtype=torch.float64) * (0.5 + torch.rand(D, N, generator=g, dtype=torch.float64)),
        "B": torch.randn(B, T, N, generator=g, dtype=torch.float64),
        "C": torch.randn(B, T, N, generator=g, dtype=torch.float64),
    }
    if h0:
        x["initial_state"] = torch.randn(B, D, N, generator=g, dtype=torch.float64)
    return x


def run_scan(scan, x, dtypes=None, **kw):
    """Outputs (y, final state h) and gradients of a random linear loss on both."""
    return run_with_grads(scan, x, dtypes, outputs=("y", "h"), **kw)


SHAPES = [  # (B, T, D, N, chunk, initial state)
    (1, 1, 3, 4, 64, True),  # T = 1
    (2, 37, 6, 5, 8, True),  # T not a multiple of the chunk
    (2, 100, 16, 16, 32, False),
    (1, 70, 4, 64, 64, True),  # N = 64 (the default d_state), T > chunk
]


BACKENDS = ["step", "block"]  # "block" runs uncompiled on CPU: same maths as the compiled CUDA path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_chunk_matches_naive_fp32(shape, backend):
    B, T, D, N, cs, h0 = shape
    x = scan_inputs(B, T, D, N, seed=T, h0=h0)
    ref = run_scan(naive_selective_scan, x)
    got = run_scan(chunk_selective_scan, x, {n: torch.float32 for n in x}, chunk_size=cs, backend=backend)
    assert_all_close(got, ref, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_chunk_matches_naive_bf16_inputs(shape, backend):
    """The layer feeds bf16 x (rounded), B, C under autocast; delta, A stay fp32."""
    B, T, D, N, cs, h0 = shape
    x = scan_inputs(B, T, D, N, seed=T + 1, h0=h0)
    for n in ("u", "B", "C"):
        x[n] = x[n].bfloat16().double()
    ref = run_scan(naive_selective_scan, x)
    dtypes = {"u": torch.bfloat16, "B": torch.bfloat16, "C": torch.bfloat16,
              "delta": torch.float32, "A": torch.float32, "initial_state": torch.float32}
    got = run_scan(chunk_selective_scan, x, dtypes, chunk_size=cs, backend=backend)
    assert_all_close(got, ref, 1e-2, tols=dict.fromkeys(GATES, 2e-2))


def test_output_dtype_follows_u():
    x = scan_inputs(1, 5, 3, 4, seed=0)
    y, h = chunk_selective_scan(x["u"].bfloat16(), *(x[n].float() for n in ("delta", "A", "B", "C")))
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_chunk_size_and_backend_invariance():
    x = scan_inputs(2, 53, 5, 6, seed=3)
    f32 = {n: torch.float32 for n in x}
    ref = run_scan(chunk_selective_scan, x, f32, chunk_size=53, backend="step")
    for backend, cs in [("step", 1), ("step", 7), ("step", 64), ("block", 1), ("block", 16), ("block", 40), ("block", 64)]:
        got = run_scan(chunk_selective_scan, x, f32, chunk_size=cs, backend=backend)
        for name in ref:
            assert_close(f"{name} ({backend}, chunk {cs})", got[name], ref[name], 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["huge_delta", "tiny_delta", "large_inputs"])
def test_extreme_gates_finite_and_exact(case, backend):
    """delta*A down to -1e5 (decay underflows to 0), delta ~ 1e-9 (no decay), |u| ~ 1e4."""
    x = scan_inputs(2, 40, 4, 8, seed=11)
    if case == "huge_delta":
        x["delta"] = x["delta"] * 1e3 + 10.0
    elif case == "tiny_delta":
        x["delta"] = x["delta"] * 1e-9
    else:
        x["u"], x["B"], x["C"] = x["u"] * 1e4, x["B"] * 30, x["C"] * 30
    ref = run_scan(naive_selective_scan, x)
    got = run_scan(chunk_selective_scan, x, {n: torch.float32 for n in x}, chunk_size=16, backend=backend)
    for name in ref:
        assert torch.isfinite(ref[name]).all(), f"reference {name} not finite"
    assert_all_close(got, ref, 1e-5)


def test_kernel_rejects_bad_shapes():
    x = scan_inputs(2, 10, 4, 3, seed=0, h0=False)
    with pytest.raises(ValueError, match="delta"):
        chunk_selective_scan(x["u"], x["delta"][:, :5], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        naive_selective_scan(x["u"], x["delta"], x["A"][:2], x["B"], x["C"])
    with pytest.raises(ValueError, match="C must be"):
        chunk_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"][..., :2])
    with pytest.raises(ValueError, match="initial_state"):
        chunk_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], initial_state=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        chunk_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", BACKENDS)  # "block" is torch.compile'd on CUDA
def test_cuda_backends_match_float64_reference(backend):
    x = scan_inputs(3, 150, 32, 16, seed=21)
    ref = run_scan(naive_selective_scan, x)
    cuda32 = {n: t.float().cuda() for n, t in x.items()}
    got = run_scan(chunk_selective_scan, cuda32, chunk_size=64, backend=backend)
    for name in ref:
        assert_close(name, got[name].cpu(), ref[name], 1e-5)


# ---------------------------------------------------------------- layer


def small_layer(seed=0, d=16, N=8, chunk_size=8):
    torch.manual_seed(seed)
    layer = Mamba(d_model=d, n_head=4, d_state=N, chunk_size=chunk_size)
    with torch.no_grad():  # move A and D off their identical inits so their grads are exercised
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
        layer.D.add_(0.5 * torch.randn_like(layer.D))
    return layer


def test_layer_chunk_matches_naive_float64():
    layer = small_layer()
    x = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(2))
    got, ref = chunk_and_naive_grads(layer, x, seeded_randn(x.shape, 5))
    assert len(ref) == 2 + 9  # y, dx and all nine parameter tensors
    assert_all_close(got, ref, 1e-5)


def test_layer_bf16_autocast_close_to_float64():
    layer = small_layer(seed=1)
    x = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(3))
    got, ref = chunk_and_naive_grads(layer, x, seeded_randn(x.shape, 5), autocast=True)
    assert_close("y", got["y"], ref["y"], 2e-2)
    assert_close("dx", got["dx"], ref["dx"], 3e-2)


@pytest.mark.parametrize("mode", ["chunk", "naive"])
def test_layer_is_causal(mode):
    layer = small_layer(seed=2)
    layer.mode = mode
    assert_causal_and_padding_invariant(layer, d=16, T=29, cuts=(0, 7, 8, 12, 27), causal_tol=(1e-6, 1e-7))


def test_layer_right_padding_invariant():
    assert_causal_and_padding_invariant(small_layer(seed=3), d=16, T=37, pads=(27,), pad_tol=(1e-6, 1e-7), B=3)


def test_layer_large_inputs_finite():
    x = 1e3 * torch.randn(2, 40, 16, generator=torch.Generator().manual_seed(7))
    assert_finite_grads(small_layer(seed=4), x, seeded_randn(x.shape, 8))


def test_init_follows_mamba_ssm():
    d, N = 40, 16
    layer = Mamba(d_model=d, n_head=4, d_state=N, chunk_size=64)
    d_inner, dt_rank = 2 * d, math.ceil(d / 16)
    assert layer.dt_rank == dt_rank == 3
    assert layer.in_proj.weight.shape == (2 * d_inner, d) and layer.in_proj.bias is None
    assert layer.x_proj.weight.shape == (dt_rank + 2 * N, d_inner) and layer.x_proj.bias is None
    assert layer.out_proj.weight.shape == (d, d_inner) and layer.out_proj.bias is None
    assert layer.conv1d.conv.bias is not None and layer.conv1d.kernel_size == 4
    # A = -(1..N) for every channel, D = 1
    assert torch.equal(layer.A_log.data, torch.log(torch.arange(1, N + 1.0)).expand(d_inner, N))
    assert torch.equal(layer.D.data, torch.ones(d_inner))
    # dt_proj: weight U(+-dt_rank^-0.5); softplus(bias) = dt in [1e-3, 0.1]
    assert layer.dt_proj.weight.abs().max() <= dt_rank**-0.5
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert layer.state_size() == d_inner * N


def test_registered_with_defaults():
    assert "mamba" in available() and get_mixer("mamba") is Mamba
    assert Mamba.default_d_state == 64
    net = RecNet("mamba", 64, vocab=5, num_classes=7, n_layers=2)
    assert net.d_state == 64 and net.state_size_per_layer() == 128 * 64
    assert net(torch.randn(2, 9, 5)).shape == (2, 9, 7)


@pytest.mark.parametrize("d_state", [128, 64])
def test_parameter_counts(d_state):
    for feat, expected in PARAMS_M[d_state].items():
        assert_parameter_count("mamba", feat, expected, n_layers=8, d_state=d_state)

"""Transformer baseline: SDPA vs fp64 step-by-step decoding with a KV cache, the paper's layer
pieces (RMSNorm, RoPE, SwiGLU, double residual), width remaps and parameter counts (SELECTIVBENCH §10.3-10.4)."""

import math

import pytest
import torch

from selectivbench.models import RecNet, get_mixer
from selectivbench.models.transformer import PaperRMSNorm, Transformer, apply_rope, naive_attention, sdpa_attention
from selectivbench.models.wrapper import SkippedSize
from mixer_checks import (
    assert_all_close,
    assert_causal_and_padding_invariant,
    assert_close,
    assert_finite_grads,
    assert_parameter_count,
    chunk_and_naive_grads,
    rel_err,
    run_with_grads,
    seeded_randn,
)

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers); 648 and 1296 are built at 768 / 1280
PARAMS_M = {256: 8.845, 384: 19.558, 512: 34.465, 648: 76.861, 768: 76.861,
            1024: 136.035, 1152: 171.912, 1296: 211.985}


def qkv(B, H, T, hd, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return dict(zip("qkv", (scale * torch.randn(B, H, T, hd, generator=g, dtype=torch.float64) for _ in range(3))))


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 4, 37, 16), (1, 3, 130, 32)])
def test_sdpa_matches_naive_fp32(shape):
    x = qkv(*shape, seed=shape[2])
    ref = run_with_grads(naive_attention, x, outputs=("o",))
    got = run_with_grads(sdpa_attention, x, {n: torch.float32 for n in x}, outputs=("o",))
    assert got["o"].dtype == torch.float32
    # T = 1: one key, softmax == 1, so dq and dk are exactly 0
    assert_all_close(got, ref, 1e-5, zero_atol=1e-6)


def test_sdpa_matches_naive_bf16_inputs():
    x = {n: t.bfloat16().double() for n, t in qkv(2, 4, 50, 16, seed=3).items()}
    ref = run_with_grads(naive_attention, x, outputs=("o",))
    got = run_with_grads(sdpa_attention, x, {n: torch.bfloat16 for n in x}, outputs=("o",))
    assert got["o"].dtype == torch.bfloat16
    assert_all_close(got, ref, 1e-2)


def test_naive_attention_first_step_and_peaked_softmax():
    q, k, v = qkv(1, 2, 6, 4, seed=0).values()
    o = naive_attention(q, k, v)
    assert torch.allclose(o[..., 0, :], v[..., 0, :])  # step 0 sees only itself
    # huge logits: softmax stays finite and picks the best causal key (of the rotated q, k)
    o = naive_attention(1e4 * q, k, v)
    scores = apply_rope(q) @ apply_rope(k).transpose(-1, -2)
    best = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), -math.inf).argmax(-1)
    assert torch.isfinite(o).all()
    assert torch.allclose(o, torch.gather(v, 2, best[..., None].expand(-1, -1, -1, 4)))


def test_paper_rmsnorm_formula():
    norm = PaperRMSNorm(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    rms = 5 / math.sqrt(2)
    expected = torch.tensor([[3 / (rms + 1e-8), 2 * 4 / (rms + 1e-8)], [0.0, 0.0]])
    assert torch.allclose(norm(x), expected, rtol=1e-6) and norm.eps == 1e-8


def test_rope_is_the_papers_halves_rotation():
    """(x1 + i x2) * exp(-i t theta_j), theta_j = 1000^(-2j/hd); relative-position invariance of <q_t, k_s>;
    one position rotated alone at offset t (a decoding step) equals row t of the whole sequence, bit for bit."""
    B, H, T, hd = 1, 2, 9, 8
    x = torch.randn(B, H, T, hd, dtype=torch.float64)
    theta = 1000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.exp(-1j * torch.arange(T)[:, None] * theta)
    assert torch.allclose(apply_rope(x), torch.cat([z.real, z.imag], -1), atol=1e-12)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    rq, rk = apply_rope(q.expand(T, hd)), apply_rope(k.expand(T, hd))
    assert torch.allclose(rq[5] @ rk[2], rq[7] @ rk[4], atol=1e-12)
    x32 = x.float()
    for t in (0, 4, 8):
        assert torch.equal(apply_rope(x32[..., t : t + 1, :], start=t), apply_rope(x32)[..., t : t + 1, :])
    with pytest.raises(ValueError, match="even head dim"):
        apply_rope(torch.zeros(1, 1, 2, 5))


# ---------------------------------------------------------------- layer


def small_layer(seed=0, d=32, heads=4):
    torch.manual_seed(seed)
    layer = Transformer(d_model=d, n_head=heads)
    with torch.no_grad():  # move the norms and beta off their inits so their grads are exercised
        for p in (layer.q_norm.weight, layer.k_norm.weight, layer.out_norm.weight):
            p.add_(0.3 * torch.randn_like(p))
        layer.beta.fill_(0.7)
    return layer.eval()


@pytest.mark.parametrize("T", [1, 37])
def test_layer_chunk_matches_naive_float64(T):
    layer = small_layer()
    x = torch.randn(2, T, 32, generator=torch.Generator().manual_seed(2))
    got, ref = chunk_and_naive_grads(layer, x, seeded_randn(x.shape, 5))
    assert len(ref) == 2 + 16  # y, dx and every parameter tensor
    # T = 1: one key, so the grads through q and k (q/k projections and norms) are exactly 0
    assert_all_close(got, ref, 1e-5, zero_atol=1e-6)


def test_layer_bf16_autocast_close_to_float64():
    layer = small_layer(seed=1)
    x = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(3))
    got, ref = chunk_and_naive_grads(layer, x, seeded_randn(x.shape, 5), autocast=True)
    assert_close("y", got["y"], ref["y"], 2e-2)
    assert_close("dx", got["dx"], ref["dx"], 2e-2)


def test_layer_forward_formula():
    """Attention branch off (out_norm weight 0): y = x + W2(swish_beta(a) * b), [a, b] = W1 x."""
    layer = small_layer(seed=2)
    with torch.no_grad():
        layer.out_norm.weight.zero_()
    x = torch.randn(2, 7, 32)
    a, b = (x @ layer.linear1.weight.T + layer.linear1.bias).chunk(2, -1)
    ffn = (a / (1 + torch.exp(-0.7 * a)) * b) @ layer.linear2.weight.T + layer.linear2.bias
    assert torch.allclose(layer(x), x + ffn, atol=1e-5)
    with torch.no_grad():  # ... and with the FFN off too, the layer returns its input (the wrapper adds it again)
        layer.linear2.weight.zero_()
        layer.linear2.bias.zero_()
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("mode", ["chunk", "naive"])
def test_layer_is_causal(mode):
    layer = small_layer(seed=3)
    layer.mode = mode
    assert_causal_and_padding_invariant(layer, d=32, T=25, cuts=(0, 10, 23), causal_tol=(1e-5, 1e-6))


def test_layer_right_padding_invariant():
    assert_causal_and_padding_invariant(small_layer(seed=4), d=32, T=37, pads=(20,), pad_tol=(1e-5, 1e-6), B=3)


def test_layer_large_inputs_finite():
    x = 1e4 * torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(6))
    assert_finite_grads(small_layer(seed=5).train(), x, seeded_randn(x.shape, 7))


def test_widths_heads_and_skip():
    assert get_mixer("transformer") is Transformer
    assert [Transformer.model_width(f) for f in (256, 648, 960, 1296)] == [256, 768, None, 1280]
    with pytest.raises(SkippedSize):
        RecNet("transformer", 960, vocab=41, num_classes=1601)
    with torch.device("meta"):
        for feat, width, heads, hd in ((648, 768, 8, 96), (1296, 1280, 16, 80), (1152, 1152, 16, 72)):
            net = RecNet("transformer", feat, vocab=41, num_classes=1601)
            assert (net.width, net.n_head, net.mixers[0].head_dim) == (width, heads, hd)
    layer = Transformer(d_model=32, n_head=4)
    assert layer.state_size() == 0 and layer.kv_cache_per_token() == 64
    assert isinstance(layer.dropout, torch.nn.Dropout) and layer.dropout.p == 0.2


def test_parameter_counts():
    for feat, expected in PARAMS_M.items():
        assert_parameter_count("transformer", feat, expected, n_layers=8)


def test_rel_err_helper_detects_errors():
    ref = torch.randn(100, dtype=torch.float64)
    assert rel_err(ref * (1 + 1e-3), ref) == pytest.approx(1e-3, rel=1e-6)
    assert rel_err(ref, torch.zeros(100), floor=2.0) == pytest.approx(ref.pow(2).mean().sqrt().item() / 2)
    with pytest.raises(AssertionError, match="rel RMS error"):
        assert_close("x", ref * (1 + 1e-3), ref, 1e-4)
    with pytest.raises(AssertionError, match="reference is 0"):
        assert_close("x", torch.full((3,), 1e-5), torch.zeros(3), 1e-5, zero_atol=1e-6)

"""Transformer baseline: SDPA vs explicit fp64 softmax attention, the paper's layer pieces
(RMSNorm, RoPE, SwiGLU, double residual), width remaps and parameter counts (SELECTIVBENCH §10.3-10.4)."""

import copy
import math

import pytest
import torch

from selectivbench.models import RecNet, get_mixer
from selectivbench.models.transformer import PaperRMSNorm, Transformer, apply_rope, naive_attention, sdpa_attention
from selectivbench.models.wrapper import SkippedSize
from test_mamba import assert_close, rel_rms

# SELECTIVBENCH.md §10.4 (millions; V = 41, C = 1601, 8 layers); 648 and 1296 are built at 768 / 1280
PARAMS_M = {256: 8.845, 384: 19.558, 512: 34.465, 648: 76.861, 768: 76.861,
            1024: 136.035, 1152: 171.912, 1296: 211.985}


def attention_grads(attend, q, k, v, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    o = attend(*leaves)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((o.double() * w).sum(), leaves)
    return {"o": o.detach().double(), **{n: g.double() for n, g in zip(("dq", "dk", "dv"), grads)}}


def qkv(B, H, T, hd, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, H, T, hd, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 4, 37, 16), (1, 3, 130, 32)])
def test_sdpa_matches_naive_fp32(shape):
    q, k, v = qkv(*shape, seed=shape[2])
    ref = attention_grads(naive_attention, q, k, v, torch.float64)
    got = attention_grads(sdpa_attention, q, k, v, torch.float32)
    for name in ref:
        if shape[2] == 1 and name in ("dq", "dk"):  # one key: softmax == 1, these grads are exactly 0
            assert got[name].abs().max() < 1e-6 and ref[name].abs().max() < 1e-12
            continue
        assert_close(name, got[name], ref[name], 1e-5)


def test_sdpa_matches_naive_bf16_inputs():
    q, k, v = (t.bfloat16().double() for t in qkv(2, 4, 50, 16, seed=3))
    ref = attention_grads(naive_attention, q, k, v, torch.float64)
    got = attention_grads(sdpa_attention, q, k, v, torch.bfloat16)
    for name in ref:
        assert_close(name, got[name], ref[name], 1e-2)


def test_naive_attention_first_step_and_peaked_softmax():
    q, k, v = qkv(1, 2, 6, 4, seed=0)
    o = naive_attention(q, k, v)
    assert torch.allclose(o[..., 0, :], v[..., 0, :])  # step 0 sees only itself
    # huge logits: softmax stays finite and picks the best causal key
    o = naive_attention(1e4 * q, k, v)
    best = (q @ k.transpose(-1, -2)).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), -math.inf).argmax(-1)
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
    """(x1 + i x2) * exp(-i t theta_j), theta_j = 1000^(-2j/hd); relative-position invariance of <q_t, k_s>."""
    B, T, H, hd = 1, 9, 2, 8
    x = torch.randn(B, T, H, hd, dtype=torch.float64)
    theta = 1000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.exp(-1j * torch.arange(T)[:, None, None] * theta)
    assert torch.allclose(apply_rope(x), torch.cat([z.real, z.imag], -1), atol=1e-6)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    rq = apply_rope(q.expand(1, T, 1, hd))[0, :, 0]
    rk = apply_rope(k.expand(1, T, 1, hd))[0, :, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[7] @ rk[4], atol=1e-5)
    with pytest.raises(ValueError, match="even head dim"):
        apply_rope(torch.zeros(1, 2, 1, 5))


# ---------------------------------------------------------------- layer


def small_layer(seed=0, d=32, heads=4):
    torch.manual_seed(seed)
    layer = Transformer(d_model=d, n_head=heads)
    with torch.no_grad():  # move the norms and beta off their inits so their grads are exercised
        for p in (layer.q_norm.weight, layer.k_norm.weight, layer.out_norm.weight):
            p.add_(0.3 * torch.randn_like(p))
        layer.beta.fill_(0.7)
    return layer.eval()


def layer_grads(layer, x, mode, autocast=False):
    layer.mode = mode
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (y.double() * w).sum().backward()
    return {"y": y.detach().double(), "dx": x.grad.double(), **{n: p.grad.double() for n, p in layer.named_parameters()}}


def test_layer_chunk_matches_naive_float64():
    layer = small_layer()
    x = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(2))
    ref = layer_grads(copy.deepcopy(layer).double(), x.double(), "naive")
    got = layer_grads(layer, x, "chunk")
    assert len(ref) == 2 + 16  # y, dx and every parameter tensor
    for name in ref:
        assert_close(name, got[name], ref[name], 1e-5)


def test_layer_bf16_autocast_close_to_float64():
    layer = small_layer(seed=1)
    x = torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(3))
    ref = layer_grads(copy.deepcopy(layer).double(), x.double(), "naive")
    got = layer_grads(layer, x, "chunk", autocast=True)
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
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 25, 32, generator=g)
    t = 10
    x2 = x.clone()
    x2[:, t + 1:] = 10 * torch.randn(2, 25 - t - 1, 32, generator=g)
    with torch.no_grad():
        y, y2 = layer(x), layer(x2)
    assert torch.allclose(y[:, : t + 1], y2[:, : t + 1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y[:, t + 1:], y2[:, t + 1:])


def test_layer_right_padding_invariant():
    layer = small_layer(seed=4)
    x = torch.randn(3, 37, 32)
    padded = torch.cat([x, torch.zeros(3, 20, 32)], dim=1)
    with torch.no_grad():
        assert torch.allclose(layer(padded)[:, :37], layer(x), rtol=1e-5, atol=1e-6)


def test_layer_large_inputs_finite():
    layer = small_layer(seed=5).train()
    x = (1e4 * torch.randn(2, 40, 32)).requires_grad_()
    y = layer(x)
    (y / 1e4).square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


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
        with torch.device("meta"):
            net = RecNet("transformer", feat, vocab=41, num_classes=1601, n_layers=8)
        assert round(net.num_parameters() / 1e6, 3) == expected, feat


def test_rel_rms_helper_detects_errors():
    ref = torch.randn(100, dtype=torch.float64)
    assert rel_rms(ref * (1 + 1e-3), ref) == pytest.approx(1e-3, rel=1e-6)

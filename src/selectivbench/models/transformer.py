"""Softmax-attention baseline: the paper's own `TransformerDecoderLayer` (SELECTIVBENCH §10.3,
ARCHITECTURES.md §2.9), as a Mixer.

Layer: q, k, v (Linear with bias) -> per-head RMSNorm on q, k -> RoPE (base 1000) -> causal
attention -> out_proj -> h = x + RMSNorm_d(.) ; ffn = W2(swish_beta(a) * b) with [a, b] = W1 h ;
return h + Dropout(ffn). The RecNet wrapper adds x once more (the paper's double residual).

Kernels on (B, H, T, hd), q and k before RoPE: `sdpa_attention` (the fast path: RoPE on all
positions, then torch's fused causal SDPA, flash / memory-efficient on GPU) and `naive_attention`
(the step-by-step reference: autoregressive decoding with a KV cache, one position at a time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models.registry import Mixer, register

ROPE_BASE = 1000.0  # train.py's default --rope_base
FFN_DROPOUT = 0.2  # the layer gets RecNet's dropout (0.2 in every sweep)

# The paper builds the transformer at another width for two sizes and skips 960 (§10.3).
_WIDTH_REMAP = {648: 768, 1296: 1280, 960: None}


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RoPE on every position, then causal softmax attention with scale 1/sqrt(hd) via torch's
    fused kernel; (B, H, T, hd)."""
    return F.scaled_dot_product_attention(apply_rope(q), apply_rope(k), v, is_causal=True)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference: autoregressive decoding, in fp32 (fp64 if given); (B, H, T, hd).

    Step t rotates k_t by position t (the fast path's `apply_rope`, at offset t), writes it with
    v_t to row t of the KV cache, and attends q_t (rotated likewise) to rows 0..t:
    o_t = softmax(q_t K_{<=t}^T / sqrt(hd)) V_{<=t}. A row never changes once written, so the
    writes run as a first loop and each step reads a prefix view of one contiguous cache tensor:
    a fresh copy of the cache per step would make autograd save O(T^2 d) (14 GB at B 8, T 1300, d 256).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (t.to(dtype) for t in (q, k, v))
    T, hd = q.shape[-2:]

    def rope_at(x: torch.Tensor, t: int) -> torch.Tensor:  # x (B, H, hd): one position
        return apply_rope(x.unsqueeze(-2), start=t).squeeze(-2)

    if T == 0:
        return q.new_zeros(q.shape)
    keys = torch.stack([rope_at(kf[..., t, :], t) for t in range(T)], dim=-2)
    values = torch.stack([vf[..., t, :] for t in range(T)], dim=-2)
    outs = []
    for t in range(T):
        scores = rope_at(qf[..., t, :], t).unsqueeze(-2) @ keys[..., : t + 1, :].transpose(-1, -2)
        p = (scores / math.sqrt(hd)).softmax(dim=-1)  # (B, H, 1, t+1)
        outs.append((p @ values[..., : t + 1, :]).squeeze(-2))
    return torch.stack(outs, dim=-2).to(q.dtype)


class PaperRMSNorm(nn.Module):
    """The paper's RMSNorm: x / (||x||_2 / sqrt(dim) + eps) * w  (eps outside the root, 1e-8)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rms = xf.norm(2, dim=-1, keepdim=True) * self.dim**-0.5
        return (xf / (rms + self.eps) * self.weight.float()).to(x.dtype)


def apply_rope(x: torch.Tensor, base: float = ROPE_BASE, start: int = 0) -> torch.Tensor:
    """The paper's rotary embedding on (..., T, hd), halves split: y1 = x1 cos + x2 sin,
    y2 = -x1 sin + x2 cos, angle (start + t) * base^(-2i/hd); fp32 inside (fp64 for fp64 x).
    `start` places x at positions start.. (one decoding step) with the same angles as the full sequence."""
    T, hd = x.shape[-2], x.shape[-1]
    if hd % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {hd}")
    ct = torch.promote_types(x.dtype, torch.float32)
    inv_freq = (1.0 / base) ** (torch.arange(0, hd, 2, device=x.device, dtype=ct) / hd)
    freqs = torch.outer(torch.arange(start, start + T, device=x.device, dtype=ct), inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    x1, x2 = x.to(ct).chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).to(x.dtype)


@register("transformer")
class Transformer(Mixer):
    summary = "softmax attention + SwiGLU FFN (paper's layer: qk-RMSNorm, RoPE 1000, double residual)"

    @classmethod
    def model_width(cls, feat_size: int) -> int | None:
        return _WIDTH_REMAP.get(feat_size, feat_size)

    def __init__(self, d_model: int, n_head: int, d_state: int | None = None, chunk_size: int | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"transformer: d_model={d_model} is not divisible by n_head={n_head}")
        self.d_model, self.n_head, self.head_dim = d_model, n_head, d_model // n_head
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.q_norm = PaperRMSNorm(self.head_dim)
        self.k_norm = PaperRMSNorm(self.head_dim)
        self.out_norm = PaperRMSNorm(d_model)
        self.linear1 = nn.Linear(d_model, 2 * 4 * d_model)
        self.linear2 = nn.Linear(4 * d_model, d_model)
        self.beta = nn.Parameter(torch.ones(1))  # learnable swish slope, one per layer
        self.dropout = nn.Dropout(FFN_DROPOUT)

    def state_size(self) -> int:
        """0: attention has no fixed-size state (its KV cache grows by `kv_cache_per_token()` per step)."""
        return 0

    def kv_cache_per_token(self) -> int:
        return 2 * self.d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bsz, T, _ = x.shape
        heads = (Bsz, T, self.n_head, self.head_dim)
        q = self.q_norm(self.q_proj(x).view(heads)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(heads)).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        attend = sdpa_attention if self.mode == "chunk" else naive_attention  # both apply RoPE
        o = attend(q, k, v).transpose(1, 2).reshape(Bsz, T, self.d_model)
        h = x + self.out_norm(self.out_proj(o))
        a, b = self.linear1(h).chunk(2, dim=-1)
        ffn = self.linear2(a * torch.sigmoid(self.beta * a) * b)
        return h + self.dropout(ffn)

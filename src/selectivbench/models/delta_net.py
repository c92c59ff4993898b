"""DeltaNet (fla ``DeltaNet`` as the paper instantiates it; ARCHITECTURES.md §2.3, §3.3).

Recurrence per head (no decay): S_t = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.
The chunked kernel is the gated one with log-decay ≡ 0; the naive recurrence here is its own
(ungated) loop, so the tests check that reuse.
"""

from __future__ import annotations

import torch
from torch import nn

from selectivbench.models.gated_delta_net import check_mode, chunk_gated_delta_rule, fp32_linear
from selectivbench.models.layers import RMSNorm, l2norm, qkv_projections, qkv_short_convs
from selectivbench.models.registry import Mixer, register


def chunk_delta_rule(q, k, v, beta, chunk_size: int = 64, scale: float | None = None,
                     initial_state: torch.Tensor | None = None, inverse: str = "solve"):
    """Chunked delta rule (§3.3) = gated kernel without decay. Shapes as ``chunk_gated_delta_rule``."""
    return chunk_gated_delta_rule(q, k, v, None, beta, chunk_size=chunk_size, scale=scale,
                                  initial_state=initial_state, inverse=inverse)


def naive_delta_rule(q, k, v, beta, scale: float | None = None, initial_state: torch.Tensor | None = None):
    """Step-by-step delta rule: S ← S + β_t k_t (v_t − Sᵀk_t)ᵀ; o_t = scale Sᵀq_t.

    q, k (B, H, T, K) L2-normalised, v (B, H, T, V), beta (B, H, T). Computes in float64 for
    float64 inputs, else fp32; returns (o in q's dtype, final state).
    """
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype, ct = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, beta = (x.to(ct) for x in (q, k, v, beta))
    B, H, T, _ = k.shape
    S = k.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(ct)
    outs = []
    for t in range(T):
        k_t = k[:, :, t]
        error = v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k_t)
        S = S + beta[:, :, t, None, None] * k_t[..., :, None] * error[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, v.shape[-1])
    return o.to(dtype), S


@register("delta_net")
class DeltaNet(Mixer):
    """fla DeltaNet(hidden_size=d, num_heads=H, use_short_conv=True, expand_k=1, expand_v=2, conv_size=4)."""

    summary = "DeltaNet: delta rule (no decay), β ∈ (0,1), L2-normalised q/k, per-head RMSNorm output"
    default_chunk_size = 64

    def __init__(self, d_model: int, n_head: int, d_state: int | None = None, chunk_size: int | None = None,
                 expand_v: int = 2, conv_size: int = 4, norm_eps: float = 1e-5):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head, self.head_k_dim, self.head_v_dim = n_head, d_model // n_head, expand_v * (d_model // n_head)
        self.chunk_size = chunk_size or self.default_chunk_size
        key_dim, value_dim = d_model, n_head * self.head_v_dim
        # creation order as in fla, so the same seed draws the same initial weights
        self.q_proj, self.k_proj, self.v_proj = qkv_projections(d_model, key_dim, value_dim)
        self.b_proj = nn.Linear(d_model, n_head, bias=False)
        self.q_conv1d, self.k_conv1d, self.v_conv1d = qkv_short_convs(key_dim, value_dim, conv_size)
        self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def state_size(self) -> int:
        return self.n_head * self.head_k_dim * self.head_v_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_mode(self.mode)
        B, T, _ = x.shape
        H, K, V = self.n_head, self.head_k_dim, self.head_v_dim
        q = l2norm(self.q_conv1d(self.q_proj(x)).view(B, T, H, K)).transpose(1, 2)
        k = l2norm(self.k_conv1d(self.k_proj(x)).view(B, T, H, K)).transpose(1, 2)
        v = self.v_conv1d(self.v_proj(x)).view(B, T, H, V).transpose(1, 2)
        beta = fp32_linear(x, self.b_proj).sigmoid().transpose(1, 2)
        if self.mode == "chunk":
            o, _ = chunk_delta_rule(q, k, v, beta, chunk_size=self.chunk_size)
        else:
            o, _ = naive_delta_rule(q, k, v, beta)
        o = self.o_norm(o.transpose(1, 2))
        return self.o_proj(o.reshape(B, T, H * V))

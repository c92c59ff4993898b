"""Gated DeltaProduct (fla ``GatedDeltaProduct`` as the paper instantiates it; ARCHITECTURES.md §2.5, §3.5).

Per token: decay once, then n_h delta (generalised Householder) steps with their own k, v, β:
    S ← α_t S_{t−1};  for j = 1..n_h: S ← S + β_{t,j} k_{t,j} (v_{t,j} − Sᵀk_{t,j})ᵀ;  o_t = scale Sᵀq_t.
Chunked path: the gated delta kernel on the interleaved sequence of n_h·T sub-steps (decay on
each token's first sub-step, the query read after its last). The naive recurrence here loops
over tokens and sub-steps directly, so the tests check the interleaving.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models.gated_delta_net import (
    check_mode,
    chunk_gated_delta_rule,
    fp32_linear,
    init_decay_parameters,
    log_decay,
)
from selectivbench.models.layers import GatedRMSNorm, l2norm, qkv_projections, qkv_short_convs
from selectivbench.models.registry import Mixer, register


def chunk_gated_delta_product(q, k, v, g, beta, chunk_size: int = 64, scale: float | None = None,
                              initial_state: torch.Tensor | None = None, inverse: str = "solve"):
    """Chunked Gated DeltaProduct (§3.5). Returns (o, final_state).

    q (B, H, T, K); k (B, H, T, n_h, K) L2-normalised per sub-step; v (B, H, T, n_h, V);
    g (B, H, T) log-decay or None; beta (B, H, T, n_h). chunk_size counts interleaved
    sub-steps (64 = 16 tokens at n_h = 4) and must be a multiple of n_h.
    """
    B, H, T, n_h, K = k.shape
    # sub-step (t, j) sits at position t·n_h + j: a plain reshape of the (T, n_h) axes
    k_seq = k.reshape(B, H, T * n_h, K)
    v_seq = v.reshape(B, H, T * n_h, v.shape[-1])
    beta_seq = beta.reshape(B, H, T * n_h)
    g_seq = None if g is None else F.pad(g.unsqueeze(-1), (0, n_h - 1)).reshape(B, H, T * n_h)
    # q has T rows for n_h·T steps: the kernel reads it after every n_h-th step (j = n_h)
    return chunk_gated_delta_rule(q, k_seq, v_seq, g_seq, beta_seq, chunk_size=chunk_size, scale=scale,
                                  initial_state=initial_state, inverse=inverse)


def naive_gated_delta_product(q, k, v, g, beta, scale: float | None = None,
                              initial_state: torch.Tensor | None = None):
    """Token loop: decay once, then n_h delta steps, then read. Shapes as ``chunk_gated_delta_product``.

    Computes in float64 for float64 inputs, else fp32; returns (o in q's dtype, final state).
    """
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype, ct = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, beta = (x.to(ct) for x in (q, k, v, beta))
    B, H, T, n_h, _ = k.shape
    S = k.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(ct)
    outs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, :, t].to(ct).exp()[..., None, None]
        for j in range(n_h):
            k_tj = k[:, :, t, j]
            error = v[:, :, t, j] - torch.einsum("bhkv,bhk->bhv", S, k_tj)
            S = S + beta[:, :, t, j, None, None] * k_tj[..., :, None] * error[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, v.shape[-1])
    return o.to(dtype), S


@register("gated_delta_product")
class GatedDeltaProduct(Mixer):
    """fla GatedDeltaProduct(hidden_size=d, head_dim=d/H, num_heads=H, use_short_conv=True,
    num_householder=4, expand_v=2, conv_size=4); defaults kept: forget gate, output gate,
    allow_neg_eigval=True (β ∈ (0, 2))."""

    summary = "Gated DeltaProduct: 4 delta (Householder) steps per token, β ∈ (0,2), decay, gated RMSNorm output"
    default_chunk_size = 64

    def __init__(self, d_model: int, n_head: int, d_state: int | None = None, chunk_size: int | None = None,
                 num_householder: int = 4, allow_neg_eigval: bool = True, expand_v: int = 2,
                 conv_size: int = 4, norm_eps: float = 1e-5):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.chunk_size = chunk_size or self.default_chunk_size
        if self.chunk_size % num_householder:
            raise ValueError(f"chunk_size={self.chunk_size} must be a multiple of num_householder={num_householder}")
        self.n_head, self.head_k_dim, self.head_v_dim = n_head, d_model // n_head, expand_v * (d_model // n_head)
        self.num_householder, self.allow_neg_eigval = num_householder, allow_neg_eigval
        key_dim, value_dim = d_model, n_head * self.head_v_dim
        # creation order as in fla, so the same seed draws the same initial weights
        self.q_proj, self.k_proj, self.v_proj = qkv_projections(d_model, key_dim, value_dim, num_householder)
        self.b_proj = nn.Linear(d_model, n_head * num_householder, bias=False)
        self.a_proj = nn.Linear(d_model, n_head, bias=False)
        self.A_log, self.dt_bias = init_decay_parameters(n_head)
        self.q_conv1d, self.k_conv1d, self.v_conv1d = qkv_short_convs(key_dim, value_dim, conv_size, num_householder)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def state_size(self) -> int:
        return self.n_head * self.head_k_dim * self.head_v_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_mode(self.mode)
        B, T, _ = x.shape
        H, K, V, n_h = self.n_head, self.head_k_dim, self.head_v_dim, self.num_householder
        q = l2norm(self.q_conv1d(self.q_proj(x)).view(B, T, H, K)).transpose(1, 2)
        # fla's channel layout is (n_h, H, dim): sub-step j of token t is block j
        k = l2norm(self.k_conv1d(self.k_proj(x)).view(B, T, n_h, H, K)).permute(0, 3, 1, 2, 4)
        v = self.v_conv1d(self.v_proj(x)).view(B, T, n_h, H, V).permute(0, 3, 1, 2, 4)
        beta = fp32_linear(x, self.b_proj).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        beta = beta.view(B, T, n_h, H).permute(0, 3, 1, 2)
        g = log_decay(x, self.a_proj, self.A_log, self.dt_bias).transpose(1, 2)
        if self.mode == "chunk":
            o, _ = chunk_gated_delta_product(q, k, v, g, beta, chunk_size=self.chunk_size)
        else:
            o, _ = naive_gated_delta_product(q, k, v, g, beta)
        o = self.o_norm(o.transpose(1, 2), self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V))

"""Mamba-2: mamba_ssm's Mamba2 as the paper instantiates it (ARCHITECTURES.md §2.6, §3.1).

SSD recurrence per head (scalar decay a_t = Δ_t·A <= 0, state h_t: P × N):

    h_t = exp(a_t) h_{t-1} + x_t B_tᵀ,    y_t = h_t C_t

where x_t is the head's input already multiplied by Δ_t (the D·x skip is added by the layer).
Kernels operate on (B, H, T, ·) tensors: x (B, H, T, P), a (B, H, T), and B, C (B, G, T, N)
with G = 1 (ngroups 1: shared by all heads, broadcast) or G = H. `chunk_ssd` is the training
path (SSD, parallel inter-chunk pass); `naive_ssd` is the step-by-step reference. Decays and
states are fp32; matmul operands are cast to the input dtype (bf16 under autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models.layers import RMSNorm, ShortConv, pad_time, segsum_decay
from selectivbench.models.registry import Mixer, register


def naive_ssd(x, a, B, C) -> torch.Tensor:
    """Reference recurrence, one step at a time; state in at least fp32. Returns (B, H, T, P)."""
    b, H, T, P = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, a, B, C = (t.to(dtype) for t in (x, a, B, C))
    h = x.new_zeros(b, H, P, B.shape[-1])
    out = []
    for t in range(T):
        h = h * a[:, :, t, None, None].exp() + x[:, :, t].unsqueeze(-1) * B[:, :, t].unsqueeze(-2)
        out.append((h * C[:, :, t].unsqueeze(-2)).sum(-1))
    return torch.stack(out, dim=2)


def chunk_ssd(x, a, B, C, chunk_size: int = 64) -> torch.Tensor:
    """Chunked SSD (ARCHITECTURES.md §3.1). x (b, H, T, P), a (b, H, T), B, C (b, G, T, N) -> (b, H, T, P).

    Per chunk: intra = (C Bᵀ ⊙ Γ) X with C Bᵀ computed once per group (shared by the heads),
    inter = e^{b} ⊙ C S_n; chunk states S_n come from one parallel pass over chunks.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, H, T, P = x.shape
    G, N = B.shape[1], B.shape[-1]
    dtype = x.dtype
    L = chunk_size
    # identity steps at the end: x = B = C = 0, log decay 0 (pitfall P4)
    x, B, C = (pad_time(t.to(dtype), L, dim=2) for t in (x, B, C))
    a = pad_time(a.float(), L, dim=2)
    nc = x.shape[2] // L
    x = x.reshape(b, H, nc, L, P)
    B, C = B.reshape(b, G, nc, L, N), C.reshape(b, G, nc, L, N)
    a = a.reshape(b, H, nc, L)
    a_cum = a.cumsum(-1)  # chunk-local inclusive cumsum b_i, fp32

    # intra-chunk: (C Bᵀ ⊙ Γ) X, Γ_ij = exp(b_i − b_j) for i >= j
    CB = (C @ B.transpose(-1, -2)).float()  # (b, G, nc, L, L): once per group, not per head
    decay = segsum_decay(a)  # (b, H, nc, L, L)
    y = (CB * decay).to(dtype) @ x

    # chunk states: S_m = Σ_i exp(b_L − b_i) x_i B_iᵀ, shape (b, H, nc, P, N)
    x_to_end = (x * (a_cum[..., -1:] - a_cum).exp().unsqueeze(-1)).to(dtype)
    dS = (x_to_end.transpose(-1, -2) @ B).float()
    # state entering chunk n: Σ_{m<n} exp(Σ_{m<r<n} c_r) S_m, c = chunk totals, one matmul
    c = F.pad(a_cum[..., -1], (1, 0))  # c_{s-1} at index s
    weights = segsum_decay(c)[..., :-1, 1:]  # (b, H, nc, nc), 0 for m >= n
    S = (weights @ dS.flatten(-2)).view(b, H, nc, P, N)

    # inter-chunk read-out: exp(b_i) C_i S_n
    y_inter = (C @ S.to(dtype).transpose(-1, -2)).float() * a_cum.exp().unsqueeze(-1)
    return (y.float() + y_inter).to(dtype).reshape(b, H, nc * L, P)[:, :, :T]


@register("mamba2")
class Mamba2(Mixer):
    """mamba_ssm Mamba2(d_model=d, d_state=N, d_conv=4, expand=2, headdim=d/H) with its defaults:
    ngroups 1, conv bias, dt softplus with dt_bias init, A_log ~ log U(1, 16), D = 1 skip, gated
    RMSNorm over the whole d_inner (gate first), no projection biases.
    """

    default_d_state = 128  # SELECTIVBENCH.md §15.2
    # mamba_ssm uses 256 for its fused Triton kernels; for this PyTorch path 64 was the fastest
    # on CPU and on an H100 (eager and compiled), and the result does not depend on it
    default_chunk_size = 64
    summary = "Mamba-2: SSD, scalar data-dependent decay per head, shared B/C (mamba_ssm Mamba2)"

    def __init__(self, d_model: int, n_head: int, d_state: int | None = None, chunk_size: int | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"mamba2: d_model={d_model} is not divisible by n_head={n_head}")
        d_state = self.default_d_state if d_state is None else d_state
        chunk_size = self.default_chunk_size if chunk_size is None else chunk_size
        if chunk_size <= 0:
            raise ValueError(f"mamba2: chunk_size must be positive, got {chunk_size}")
        dt_min, dt_max, dt_init_floor = 1e-3, 0.1, 1e-4
        self.d_model, self.d_state, self.chunk_size = d_model, d_state, chunk_size
        self.d_inner = 2 * d_model
        self.headdim = d_model // n_head
        self.nheads = self.d_inner // self.headdim
        # same creation order as mamba_ssm (so a seed gives the same draws); order [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = ShortConv(self.d_inner + 2 * d_state, 4, bias=True)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads, dtype=torch.float32).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = RMSNorm(self.d_inner, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def state_size(self) -> int:
        return self.nheads * self.headdim * self.d_state

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, T, _ = u.shape
        H, P, N = self.nheads, self.headdim, self.d_state
        z, xBC, dt = torch.split(self.in_proj(u), [self.d_inner, self.d_inner + 2 * N, H], dim=-1)
        x, B, C = torch.split(self.conv1d(xBC), [self.d_inner, N, N], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, T, H), fp32
        A = -torch.exp(self.A_log.float())
        x = x.view(b, T, H, P).transpose(1, 2)  # (b, H, T, P)
        a = (dt * A).transpose(1, 2)  # (b, H, T) log decay Δ·A
        x_dt = (x * dt.transpose(1, 2).unsqueeze(-1)).to(x.dtype)  # fp32 product; autograd keeps x, not an fp32 copy
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # (b, 1, T, N): one group shared by all heads
        if self.mode == "chunk":
            y = chunk_ssd(x_dt, a, B, C, chunk_size=self.chunk_size)
        elif self.mode == "naive":
            y = naive_ssd(x_dt, a, B, C)
        else:
            raise ValueError(f"mamba2: mode must be 'chunk' or 'naive', got {self.mode!r}")
        y = y.float() + self.D.float()[:, None, None] * x  # fp32 (bf16 x is promoted exactly)
        y = y.transpose(1, 2).reshape(b, T, self.d_inner)
        y = self.norm.gate_first(y, z)  # gate first, RMS over all d_inner (norm_before_gate=False), fused
        return self.out_proj(y.to(u.dtype))

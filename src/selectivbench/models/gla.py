"""GLA: fla's GatedLinearAttention as the paper instantiates it (ARCHITECTURES.md §2.2, §3.2).

Recurrence per head, with a per-key-channel log decay g_t <= 0:

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_tᵀ,    o_t = scale · S_tᵀ q_t    (S_t: K × V)

Kernels operate on (B, H, T, ·) tensors: q, k (B, H, T, K), v (B, H, T, V), g (B, H, T, K).
`chunk_gla` is the training path (chunks of C rows, 16-row sub-chunks inside, a parallel
inter-chunk pass); `naive_gla` is the step-by-step reference. Gates, cumulative decays and
states are fp32; matmul operands are cast to the input dtype (bf16 under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models.layers import GatedRMSNorm, ShortConv, pad_time, row_blocks, segsum_decay
from selectivbench.models.registry import Mixer, register

SUB_CHUNK = 16  # rows per secondary chunk (fla's BC); chunk sizes must be multiples of it
MAX_PARALLEL_CHUNKS = 64  # chunks per parallel inter-chunk pass (longer inputs chain blocks)


def naive_gla(q, k, v, g, scale: float | None = None) -> torch.Tensor:
    """Reference recurrence, one step at a time; state in at least fp32. Returns (B, H, T, V)."""
    B, H, T, K = q.shape
    scale = K**-0.5 if scale is None else scale
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        S = S * g[:, :, t].exp().unsqueeze(-1) + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        out.append(scale * (q[:, :, t].unsqueeze(-1) * S).sum(-2))
    return torch.stack(out, dim=2).to(v.dtype)


def _exp_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(x) where mask, 0 elsewhere, without ever forming exp of a masked entry (pitfall P1).

    Masked exponents may be large and positive; `where(mask, exp(x), 0)` would then give
    inf·0 = NaN gradients. They are set to 0 *before* exp (not to −inf: exp(−inf) takes a
    slow path on x86 CPUs, ~7× slower) and the result is zeroed afterwards. In place on x
    unless autograd needs x, so pass a fresh tensor.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x.masked_fill(~mask, 0).exp().masked_fill(~mask, 0)
    return x.masked_fill_(~mask, 0).exp_().masked_fill_(~mask, 0)


class _DiagonalBlockScores(torch.autograd.Function):
    """A_ij = Σ_k q_ik k_jk exp(G_ik − G_jk) for i >= j (0 above) inside each sub-chunk, fp32.

    The exact exponent cannot be factorised into two matmuls without overflow, so it is done
    element-wise over a (c, c, K) tensor. Exponents above the diagonal (positive, may
    overflow) are masked to 0 before exp and those entries are zeroed in the small (c, c)
    result and in its incoming gradient (pitfall P1). As a Function, backward recomputes the
    (c, c, K) tensor instead of autograd keeping copies of it (each 16× q in fp32).
    Input shapes: q, k (..., c, K) in any dtype, G (..., c, K) fp32.
    """

    @staticmethod
    def _decay(G, causal):
        return (G.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill_(~causal.unsqueeze(-1), 0).exp_()

    @staticmethod
    def forward(ctx, q, k, G):
        *lead, c, K = G.shape
        causal = torch.ones(c, c, dtype=torch.bool, device=G.device).tril()
        ctx.save_for_backward(q, k, G, causal)
        q2, k2, G2 = (t.reshape(-1, c, K) for t in (q, k, G))
        A = G.new_empty(len(G2), c, c)
        for r in row_blocks(len(G2), c * c * K):  # the (c, c, K) tensor a block of sub-chunks at a time
            E = _DiagonalBlockScores._decay(G2[r], causal)
            A[r] = E.mul_(q2[r].float().unsqueeze(-2)).mul_(k2[r].float().unsqueeze(-3)).sum(-1).masked_fill_(~causal, 0)
        return A.view(*lead, c, c)

    @staticmethod
    def backward(ctx, dA):
        q, k, G, causal = ctx.saved_tensors
        c, K = G.shape[-2:]
        q2, k2, G2, dA2 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, G, dA))
        dq, dk, dG = torch.empty_like(q2), torch.empty_like(k2), torch.empty_like(G2)
        for r in row_blocks(len(G2), c * c * K):
            qf, kf = q2[r].float(), k2[r].float()
            W = _DiagonalBlockScores._decay(G2[r], causal).mul_(dA2[r].masked_fill(~causal, 0).unsqueeze(-1))
            dq_r = (W * kf.unsqueeze(-3)).sum(-2)
            dk_r = W.mul_(qf.unsqueeze(-2)).sum(-3)
            # d/dG_ik of the sum = +Σ_j (terms with query row i) − Σ_j (terms with key row i)
            dG[r] = qf * dq_r - kf * dk_r
            dq[r], dk[r] = dq_r, dk_r
        return dq.view(q.shape), dk.view(k.shape), dG.view(G.shape)


def _intra_chunk_scores(q, k, G, dtype) -> torch.Tensor:
    """A_ij = Σ_k q_ik k_jk exp(G_ik − G_jk) for i >= j within each chunk: (..., C, C) fp32.

    q, k, G: (..., C, K) fp32; `dtype` is the matmul operand dtype.

    Secondary chunking (§3.2): for a query sub-chunk I and an earlier key sub-chunk J the
    exponent splits around r = G[first row of I] into two non-positive parts, so the block is
    one matmul (Q_I ⊙ e^{G_I − r})(K_J ⊙ e^{r − G_J})ᵀ. Only query sub-chunks 1.. and key
    rows before the last sub-chunk take part; key rows at or after r are masked before exp.
    The diagonal blocks are done element-wise with the exact exponent.
    """
    *lead, C, K = q.shape
    M, c = C // SUB_CHUNK, SUB_CHUNK
    qs, ks, Gs = (t.reshape(*lead, M, c, K) for t in (q, k, G))
    A_diag = _DiagonalBlockScores.apply(qs, ks, Gs)  # (..., M, c, c)
    eye = torch.eye(M, dtype=A_diag.dtype, device=q.device)
    A = (A_diag.unsqueeze(-2) * eye[:, None, :, None]).reshape(*lead, C, C)
    if M == 1:
        return A
    r = Gs[..., 1:, 0, :]  # (..., M-1, K): reference row of query sub-chunks 1..M-1
    q_ref = (qs[..., 1:, :, :] * (Gs[..., 1:, :, :] - r.unsqueeze(-2)).exp()).to(dtype)
    key_row, ref_row = torch.arange(C - c, device=q.device), torch.arange(c, C, c, device=q.device)
    earlier = (key_row.unsqueeze(0) < ref_row.unsqueeze(1)).unsqueeze(-1)  # (M-1, C-c, 1)
    key_exp = r.unsqueeze(-2) - G[..., None, : C - c, :]  # (..., M-1, C-c, K)
    k_ref = (k[..., None, : C - c, :] * _exp_where(key_exp, earlier)).to(dtype)
    A_off = (q_ref @ k_ref.transpose(-1, -2)).float()  # (..., M-1, c, C-c), rows (I, i)
    return A + F.pad(A_off.reshape(*lead, C - c, C - c), (0, c, c, 0))


def _chunk_entry_states(dS: torch.Tensor, chunk_log_decay: torch.Tensor) -> torch.Tensor:
    """States entering each chunk: S_n = Σ_{m<n} Diag(exp(Σ_{m<r<n} c_r)) ΔS_m, S_0 = 0.

    dS (B, H, N, K, V) fp32 (chunk m's contribution, already decayed to the chunk end),
    chunk_log_decay (B, H, N, K) fp32 (c_m, total log decay of chunk m). Returns (B, H, N, K, V).
    Within a block of up to MAX_PARALLEL_CHUNKS chunks the pass is one batched matmul with a
    lower-triangular decay matrix per key channel (mamba's ssd_minimal form, no loop); blocks
    (only for T > 64·C, e.g. long evaluation sequences) are chained serially, which keeps the
    N² × K decay weights bounded.
    """
    B, H, N, K, V = dS.shape
    S = dS.new_zeros(B, H, K, V)
    entry_states = []
    for n0 in range(0, N, MAX_PARALLEL_CHUNKS):
        c = chunk_log_decay[:, :, n0 : n0 + MAX_PARALLEL_CHUNKS].transpose(-1, -2)  # (B, H, K, n)
        # the block's incoming state sits at index 0 with a zero decay before it: row z of the
        # (n+1) × (n+1) weights gives the state after z chunks of the block
        weights = segsum_decay(F.pad(c, (1, 0)))  # [z, m] = exp(Σ_{m<s<=z} c'_s)
        states = torch.cat([S.unsqueeze(2), dS[:, :, n0 : n0 + MAX_PARALLEL_CHUNKS]], dim=2)
        states = torch.einsum("bhkzm,bhmkv->bhzkv", weights, states)
        entry_states.append(states[:, :, :-1])
        S = states[:, :, -1]
    return torch.cat(entry_states, dim=2) if len(entry_states) > 1 else entry_states[0]


def chunk_gla(q, k, v, g, scale: float | None = None, chunk_size: int = 64) -> torch.Tensor:
    """Chunked GLA (ARCHITECTURES.md §3.2). q, k, g (B, H, T, K), v (B, H, T, V) -> (B, H, T, V).

    g is the per-step log decay (<= 0), taken in fp32. `chunk_size` must be a multiple of 16.
    """
    if chunk_size <= 0 or chunk_size % SUB_CHUNK:
        raise ValueError(f"chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")
    B, H, T, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype = q.dtype
    C = chunk_size
    # identity steps at the end: q = k = v = 0, log decay 0 (pitfall P4)
    q, k, v, g = (pad_time(t, C, dim=2) for t in (q, k, v.to(dtype), g.float()))
    N = q.shape[2] // C
    q, k, g = (t.reshape(B, H, N, C, K) for t in (q, k, g))
    v = v.reshape(B, H, N, C, V)
    G = g.cumsum(-2)  # chunk-local inclusive cumsum, fp32 (pitfall P3)
    G_last = G[..., -1, :]  # (B, H, N, K)

    qf, kf = q.float(), k.float()  # one fp32 copy each, shared by every use below

    A = _intra_chunk_scores(qf, kf, G, dtype)
    o = (A * scale).to(dtype) @ v

    # inter-chunk: every exponent below is <= 0
    k_to_end = (kf * (G_last.unsqueeze(-2) - G).exp()).to(dtype)
    dS = (k_to_end.transpose(-1, -2) @ v).float()  # (B, H, N, K, V)
    S = _chunk_entry_states(dS, G_last)
    q_from_start = (qf * G.exp() * scale).to(dtype)
    o = o + q_from_start @ S.to(dtype)
    return o.reshape(B, H, N * C, V)[:, :, :T]


@register("gla")
class GatedLinearAttention(Mixer):
    """fla GatedLinearAttention(hidden_size=d, num_heads=H, use_short_conv=True, expand_k=1,
    expand_v=2, conv_size=4) with its defaults: low-rank (16) key-wise gate logsigmoid(·)/16,
    swish output gate with per-head fused RMSNorm (eps 1e-5), no conv bias, PyTorch default init.
    """

    default_chunk_size = 64  # fla's chunk; 32 was as fast on CPU, 64 faster compiled on an H100
    summary = "GLA: linear attention with data-dependent per-key-channel decay (fla GatedLinearAttention)"
    gate_low_rank_dim = 16
    gate_logit_normalizer = 16

    def __init__(self, d_model: int, n_head: int, d_state: int | None = None, chunk_size: int | None = None):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"gla: d_model={d_model} is not divisible by n_head={n_head}")
        chunk_size = self.default_chunk_size if chunk_size is None else chunk_size
        if chunk_size <= 0 or chunk_size % SUB_CHUNK:
            raise ValueError(f"gla: chunk_size must be a positive multiple of {SUB_CHUNK}, got {chunk_size}")
        self.d_model, self.n_head, self.chunk_size = d_model, n_head, chunk_size
        key_dim, value_dim = d_model, 2 * d_model
        self.head_k_dim, self.head_v_dim = key_dim // n_head, value_dim // n_head
        # same creation order as fla (so a seed gives the same draws)
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.q_conv1d = ShortConv(key_dim, 4)
        self.k_conv1d = ShortConv(key_dim, 4)
        self.v_conv1d = ShortConv(value_dim, 4)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, self.gate_low_rank_dim, bias=False),
            nn.Linear(self.gate_low_rank_dim, key_dim, bias=True),
        )
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        self.g_norm_swish_gate = GatedRMSNorm(self.head_v_dim, eps=1e-5)

    def state_size(self) -> int:
        return self.n_head * self.head_k_dim * self.head_v_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        H, K, V = self.n_head, self.head_k_dim, self.head_v_dim
        q = self.q_conv1d(self.q_proj(x)).view(B, T, H, K).transpose(1, 2)
        k = self.k_conv1d(self.k_proj(x)).view(B, T, H, K).transpose(1, 2)
        v = self.v_conv1d(self.v_proj(x)).view(B, T, H, V).transpose(1, 2)
        with torch.autocast(x.device.type, enabled=False):  # gate logits in the weights' fp32 (pitfall P2)
            gk = self.gk_proj(x.to(self.gk_proj[0].weight.dtype))
        gk = F.logsigmoid(gk.float()) / self.gate_logit_normalizer
        gk = gk.view(B, T, H, K).transpose(1, 2)
        if self.mode == "chunk":
            o = chunk_gla(q, k, v, gk, chunk_size=self.chunk_size)
        elif self.mode == "naive":
            o = naive_gla(q, k, v, gk)
        else:
            raise ValueError(f"gla: mode must be 'chunk' or 'naive', got {self.mode!r}")
        g = self.g_proj(x).view(B, T, H, V)
        o = self.g_norm_swish_gate(o.transpose(1, 2), g)
        return self.o_proj(o.reshape(B, T, H * V))

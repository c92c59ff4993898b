"""Gated DeltaNet (fla ``GatedDeltaNet`` as the paper instantiates it; ARCHITECTURES.md §2.4, §3.4).

Recurrence per head (decay first, then the delta correction):
    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t.

``chunk_gated_delta_rule`` is the chunkwise-parallel WY/UT form (training path); DeltaNet
(g ≡ 0) and Gated DeltaProduct (interleaved sub-steps, queries every n_h-th step) reuse it.
``naive_gated_delta_rule`` is the step-by-step reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models import layers
from selectivbench.models.layers import GatedRMSNorm, l2norm, pad_time, qkv_projections, qkv_short_convs
from selectivbench.models.registry import Mixer, register

INVERSE_METHODS = ("solve", "doubling")


def unit_lower_inverse(A: torch.Tensor, method: str = "solve") -> torch.Tensor:
    """(I + A)^{-1} for strictly lower-triangular A (..., C, C), in A's dtype (fp32 here).

    "solve": batched triangular solve against I (fewest flops) — the default everywhere.
    "doubling": (I + A)^{-1} = Π_k (I + (−A)^{2^k}), exact because A^C = 0 — only matmuls
    (2·⌈log2 C⌉ − 2 batched C×C products). Measured at C = 64, fp32: CPU 1 thread, 672
    matrices: solve 19 ms, doubling 190 ms; H100 (TF32 off), 5376 matrices: solve 0.72 ms,
    doubling 1.8 ms. Doubling could only win with TF32/bf16 tensor-core products, which the
    fp32 inverse rules out (it feeds every gradient).
    """
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    if method == "solve":
        # unitriangular=True never reads the diagonal, so A itself stands for I + A
        return torch.linalg.solve_triangular(A, eye.expand_as(A), upper=False, unitriangular=True)
    if method == "doubling":
        power = -A
        inv = eye - A
        for _ in range(max(math.ceil(math.log2(C)) - 1, 0)):
            power = power @ power
            inv = inv + inv @ power
        return inv
    raise ValueError(f"inverse method must be one of {INVERSE_METHODS}, got {method!r}")


def _decay_matrix(b: torch.Tensor | None, C: int, ft: torch.dtype, device, rows=slice(None)) -> torch.Tensor:
    """Γ_ij = exp(b_i − b_j) for i ≥ j, else 0, for the rows i in `rows`; b None (no decay): the
    causal mask. The exponent is masked before exp (pitfall P1)."""
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()[rows]
    if b is None:  # saves three C×C passes
        return causal.to(ft)
    return (b[..., rows, None] - b[..., None, :]).masked_fill(~causal, -math.inf).exp()


class _UTTransform(torch.autograd.Function):
    """W = T·diag(β e^b) K and U = T·diag(β) V with T = (I + A)⁻¹, A_ij = β_i (k_i·k_j) Γ_ij (i > j).

    k, v (BH, N, C, ·) in the matmul dtype; β, b (BH, N, C) fp32 (b None: no decay). Saves its
    inputs and T in k's dtype (as fla does); backward recomputes Γ, K Kᵀ and the scaled K, V
    and differentiates the inverse as dA = −Tᵀ dT Tᵀ. Autograd would keep five C×C fp32 tensors
    and two scaled copies of K, V per chunk (a third of a Gated DeltaProduct layer's memory).
    """

    @staticmethod
    def forward(ctx, k, v, beta, b, inverse):
        dt = k.dtype
        gamma = _decay_matrix(b, k.shape[-2], beta.dtype, k.device)
        A = ((k @ k.transpose(-1, -2)) * gamma * beta[..., :, None]).tril(-1)  # bf16·fp32 → fp32 in one pass
        Tinv = unit_lower_inverse(A, inverse).to(dt)
        eb = beta if b is None else beta * b.exp()
        W = Tinv @ (k * eb[..., None]).to(dt)
        U = Tinv @ (v * beta[..., None]).to(dt)
        ctx.save_for_backward(k, v, beta, b, Tinv)
        return W, U

    @staticmethod
    def backward(ctx, dW, dU):
        k, v, beta, b, Tinv = ctx.saved_tensors
        lead, (C, K), V = k.shape[:-2], k.shape[-2:], v.shape[-1]
        flat = lambda t: t.reshape(-1, *t.shape[len(lead):])  # noqa: E731  (BH·N, C, ·): chunks are independent
        k, v, beta, Tinv, dW, dU = map(flat, (k, v, beta, Tinv, dW, dU))
        b = None if b is None else flat(b)
        dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
        db = None if b is None else torch.empty_like(b)
        with torch.autocast(k.device.type, enabled=False):
            for r in layers.row_blocks(k.shape[0], C * max(K, V)):  # bounds the fp32 temporaries
                out = _UTTransform._backward(k[r], v[r], beta[r], None if b is None else b[r], Tinv[r], dW[r], dU[r])
                dk[r], dv[r], dbeta[r] = out[:3]
                if db is not None:
                    db[r] = out[3]
        unflat = lambda t: None if t is None else t.view(*lead, *t.shape[1:])  # noqa: E731
        return unflat(dk), unflat(dv), unflat(dbeta), unflat(db), None

    @staticmethod
    def _backward(k, v, beta, b, Tinv, dW, dU):
        dt, ft = k.dtype, beta.dtype
        gamma = _decay_matrix(b, k.shape[-2], ft, k.device)
        eb = beta if b is None else beta * b.exp()
        kb, vb = (k * eb[..., None]).to(dt), (v * beta[..., None]).to(dt)
        Tt = Tinv.transpose(-1, -2)
        dT = dW @ kb.transpose(-1, -2) + dU @ vb.transpose(-1, -2)
        dkb, dvb = (Tt @ dW).to(ft), (Tt @ dU).to(ft)
        Tt = Tt.to(ft)
        dA = (Tt @ dT.to(ft) @ Tt).tril_(-1).neg_()  # d(I + A)⁻¹ = −T dA T
        G = dA.mul_(gamma)  # ∂/∂(β_i k_i·k_j) of A_ij
        KK = (k @ k.transpose(-1, -2)).to(ft)
        GKK = G * KK
        dkk = (G * beta[..., :, None]).to(dt)
        dk = (dkk @ k + dkk.transpose(-1, -2) @ k).to(ft) + dkb * eb[..., None]
        deb = (dkb * k.to(ft)).sum(-1)  # ∂/∂(β e^b)
        dbeta = GKK.sum(-1) + (dvb * v.to(ft)).sum(-1) + (deb if b is None else deb * b.exp())
        db = None
        if b is not None:  # Γ_ij = exp(b_i − b_j): P_ij = dA_ij A_ij flows to b_i and against b_j
            P = GKK.mul_(beta[..., :, None])
            db = P.sum(-1) - P.sum(-2) + deb * eb
        return dk.to(dt), (dvb * beta[..., None]).to(v.dtype), dbeta, db


class _ChunkStates(torch.autograd.Function):
    """States entering each chunk, S_{n+1} = M_n S_n + X_n with M_n = e^{b_C} I − K̃ᵀW,
    X_n = K̃ᵀU, K̃ = diag(e^{b_C − b}) K: the products K̃ᵀW, K̃ᵀU for all chunks at once (dt),
    M_n, X_n in fp32 per block of chunks, then one fp32 baddbmm per serial step.

    k, W, U (BH, N, C, ·) in the matmul dtype dt, b (BH, N, C) fp32, S0 (BH, K, V) fp32.
    Returns (entry states (BH, N, K, V) in dt, final state fp32). Saves its inputs and the entry
    states in dt only (as fla does); backward runs the adjoint recurrence g_n = M_nᵀ g_{n+1} + ∂S_n
    one chunk at a time, recomputing M_n. Autograd would keep every state twice (fp32 and dt) and
    every M_n (fp32).
    """

    @staticmethod
    def forward(ctx, k, b, W, U, S0):
        dt, ft = k.dtype, b.dtype
        b_last = b[..., -1:]
        k_decayed_t = (k * (b_last - b).exp()[..., None]).to(dt).transpose(-1, -2)
        # K̃ᵀW and X in dt (their matmul dtype); M and X become fp32 a block of chunks at a time
        KW, X = k_decayed_t @ W, k_decayed_t @ U
        e, eye = b_last.exp()[..., None], torch.eye(k.shape[-1], dtype=ft, device=k.device)
        S, S_in = S0, torch.empty(*X.shape, dtype=dt, device=X.device)
        for blk in _ChunkStates.blocks(X):
            M, X_f = e[:, blk] * eye - KW[:, blk], X[:, blk].to(ft)
            for i, n in enumerate(range(blk.start, blk.stop)):
                S_in[:, n] = S
                S = torch.baddbmm(X_f[:, i], M[:, i], S)
        ctx.save_for_backward(k, b, W, U, S_in)
        return S_in, S

    @staticmethod
    def blocks(X: torch.Tensor) -> list[slice]:
        """Consecutive chunks whose fp32 per-chunk tensors (BH, ·, K, V) fit in layers.BACKWARD_SLICE
        elements: per-chunk work is batched over a block, only the recurrence itself is serial."""
        BH, N, K, V = X.shape
        return layers.row_blocks(N, BH * K * max(K, V))

    @staticmethod
    def backward(ctx, dS_in, dS):
        k, b, W, U, S_in = ctx.saved_tensors
        dt, ft = k.dtype, b.dtype
        need_b = ctx.needs_input_grad[1]
        with torch.autocast(k.device.type, enabled=False):
            b_last = b[..., -1:]
            decay = (b_last - b).exp()
            e = b_last.exp()[..., 0]  # (BH, N)
            eye = torch.eye(k.shape[-1], dtype=ft, device=k.device)
            g = dS.to(ft)  # ∂L/∂S_{n+1}, walking back
            dk, dW, dU = torch.empty_like(k), torch.empty_like(W), torch.empty_like(U)
            de, s = e.new_empty(e.shape), b.new_empty(b.shape)
            for blk in reversed(_ChunkStates.blocks(S_in)):
                kd, W_b, U_b = (k[:, blk] * decay[:, blk, :, None]).to(dt), W[:, blk], U[:, blk]
                Mt = (e[:, blk, None, None] * eye - kd.transpose(-1, -2) @ W_b).transpose(-1, -2)
                G = g.new_empty(*S_in[:, blk].shape)  # G[:, i] = ∂L/∂S_{n+1} for chunk n of the block
                for i in reversed(range(blk.stop - blk.start)):  # the adjoint recurrence, serial
                    G[:, i] = g
                    g = torch.baddbmm(dS_in[:, blk.start + i].to(ft), Mt[:, i], g)
                # ∂M_n = g_{n+1} S_nᵀ, ∂X_n = g_{n+1}; then through M, X to K̃, W, U (all of the block at once)
                dM = G @ S_in[:, blk].to(ft).transpose(-1, -2)
                de[:, blk] = dM.diagonal(dim1=-2, dim2=-1).sum(-1)
                dM, G = dM.to(dt), G.to(dt)
                dkd = (U_b @ G.transpose(-1, -2) - W_b @ dM.transpose(-1, -2)).to(ft)
                dk[:, blk] = dkd * decay[:, blk, :, None]
                if need_b:  # K̃ = diag(e^{b_C − b}) K: the exponent's gradient
                    s[:, blk] = (dkd * k[:, blk].to(ft)).sum(-1) * decay[:, blk]
                dW[:, blk] = -(kd @ dM)
                dU[:, blk] = kd @ G
            db = None
            if need_b:  # b_C enters through every exponent of its chunk and through M's e^{b_C}
                db = -s
                db[..., -1] += s.sum(-1) + de * e
        return dk, db, dW, dU, g if ctx.needs_input_grad[4] else None


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    chunk_size: int = 64,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    inverse: str = "solve",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule (§3.4). Returns (o, final_state).

    q (B, H, Tq, K); k (B, H, T, K); v (B, H, T, V); g (B, H, T) log-decay ≤ 0 or None (no
    decay); beta (B, H, T); initial_state (B, H, K, V) or None. q and k must already be
    L2-normalised. With Tq = T / r the queries are read after every r-th step only (steps
    r−1, 2r−1, …): r = n_h is Gated DeltaProduct on its interleaved sequence, r = 1 the usual
    case. Matmul operands are in q's dtype, except the serial state pass S ← M S + X, which
    runs in fp32 like the cumsums, Γ, A and its inverse. o has q's dtype, the final state is
    fp32 (float64 inputs: everything float64). The UT transform and the state pass have
    hand-written backwards that keep T and the entry states in q's dtype and recompute the rest
    (pitfall P12: autograd kept ~2.3× more per layer); the output stage is left to autograd.
    """
    B, H, T, K = k.shape
    V = v.shape[-1]
    Tq = q.shape[2]
    if Tq == 0 or T % Tq:
        raise ValueError(f"k has {T} steps, q has {Tq}: q's length must divide k's")
    r = T // Tq
    C = chunk_size
    if C <= 0 or C % r:
        raise ValueError(f"chunk_size={C} must be a positive multiple of the query stride {r}")
    if inverse not in INVERSE_METHODS:
        raise ValueError(f"inverse method must be one of {INVERSE_METHODS}, got {inverse!r}")
    scale = K**-0.5 if scale is None else scale
    dt = q.dtype
    ft = torch.promote_types(dt, torch.float32)  # "fp32" parts: fp32, or float64 for float64 inputs
    N, BH, Cq = -(-T // C), B * H, C // r

    # dtypes are managed by hand: autocast would put the fp32 inverse/state matmuls in bf16
    with torch.autocast(q.device.type, enabled=False):
        # identity padding (q = k = v = 0, β = 0, log-decay 0) to whole chunks, then (BH, N, C, ·)
        q = pad_time(q.to(dt), Cq, dim=2).reshape(BH, N, Cq, K)
        k = pad_time(k.to(dt), C, dim=2).reshape(BH, N, C, K)
        v = pad_time(v.to(dt), C, dim=2).reshape(BH, N, C, V)
        beta = pad_time(beta.to(ft), C, dim=2).reshape(BH, N, C)
        if g is None:
            b = beta.new_zeros(BH, N, C)
        else:  # chunk-local inclusive cumulative log-decay (pitfall P3)
            b = pad_time(g.to(ft), C, dim=2).reshape(BH, N, C).cumsum(-1)

        # UT transform: A_ij = β_i (k_i·k_j) Γ_ij for i > j; W = T·diag(β e^b) K, U = T·diag(β) V
        W, U = _UTTransform.apply(k, v, beta, None if g is None else b, inverse)

        # chunk transition S_{n+1} = M_n S_n + X_n, the serial pass in fp32
        S0 = q.new_zeros(BH, K, V, dtype=ft) if initial_state is None else initial_state.to(ft).reshape(BH, K, V)
        S_in, S = _ChunkStates.apply(k, b, W, U, S0)
        S_in = S_in.flatten(0, 1)  # state entering each chunk (BH·N, K, V)

        # new values Ṽ = U − W S_n;  o = scale · [ diag(e^b) Q S_n + (Q Kᵀ ⊙ Γ) Ṽ ] (fused baddbmm)
        V_new = torch.baddbmm(U.flatten(0, 1), W.flatten(0, 1), S_in, alpha=-1)
        rows = slice(r - 1, None, r)  # the query sub-steps
        gamma = _decay_matrix(None if g is None else b, C, ft, k.device, rows)
        scores = ((q @ k.transpose(-1, -2)) * gamma).to(dt).flatten(0, 1)
        inter = (q * b[..., rows].exp()[..., None]).to(dt).flatten(0, 1) @ S_in
        o = torch.baddbmm(inter, scores, V_new, beta=scale, alpha=scale)
        o = o.reshape(B, H, N * Cq, V)[:, :, :Tq]
    return o, S.reshape(B, H, K, V)


def naive_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step gated delta rule: S ← e^{g_t} S; S ← S + β_t k_t (v_t − Sᵀk_t)ᵀ; o_t = scale Sᵀq_t.

    Shapes as ``chunk_gated_delta_rule`` with Tq = T. Computes in float64 for float64 inputs, else
    fp32; o has q's dtype, the final state the compute dtype.
    """
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    dtype, ct = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, g, beta = (x.to(ct) for x in (q, k, v, g, beta))
    B, H, T, _ = k.shape
    S = k.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(ct)
    outs = []
    for t in range(T):
        S = S * g[:, :, t].exp()[..., None, None]
        k_t = k[:, :, t]
        error = v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k_t)
        S = S + beta[:, :, t, None, None] * k_t[..., :, None] * error[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(B, H, 0, v.shape[-1])
    return o.to(dtype), S


def init_decay_parameters(num_heads: int) -> tuple[nn.Parameter, nn.Parameter]:
    """fla's A_log and dt_bias init (Mamba-2 style): A ~ U(0, 16); dt log-uniform in [1e-3, 1e-1]."""
    A = torch.empty(num_heads, dtype=torch.float32).uniform_(0, 16)
    A_log = nn.Parameter(torch.log(A))
    dt_min, dt_max, dt_init_floor = 0.001, 0.1, 1e-4
    dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = torch.clamp(dt, min=dt_init_floor)
    dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    A_log._no_weight_decay = True
    dt_bias._no_weight_decay = True
    return A_log, dt_bias


def fp32_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """A (small) gate projection computed in fp32 even under autocast (pitfall P2)."""
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), layer.weight.float())


def log_decay(x: torch.Tensor, a_proj: nn.Linear, A_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """Per-head log-decay a_t = −exp(A_log) · softplus(W_a x_t + dt_bias), fp32, (B, T, H)."""
    return -A_log.float().exp() * F.softplus(fp32_linear(x, a_proj) + dt_bias.float())


def check_mode(mode: str) -> None:
    if mode not in ("chunk", "naive"):
        raise ValueError(f"mixer mode must be 'chunk' or 'naive', got {mode!r}")


@register("gated_delta_net")
class GatedDeltaNet(Mixer):
    """fla GatedDeltaNet(hidden_size=d, head_dim=d/H, num_heads=H, use_short_conv=True, expand_v=2, conv_size=4)."""

    summary = "Gated DeltaNet: delta rule with per-head data-dependent decay, β ∈ (0,1), gated RMSNorm output"
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
        self.a_proj = nn.Linear(d_model, n_head, bias=False)
        self.b_proj = nn.Linear(d_model, n_head, bias=False)
        self.A_log, self.dt_bias = init_decay_parameters(n_head)
        self.q_conv1d, self.k_conv1d, self.v_conv1d = qkv_short_convs(key_dim, value_dim, conv_size)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps)
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
        g = log_decay(x, self.a_proj, self.A_log, self.dt_bias).transpose(1, 2)
        if self.mode == "chunk":
            o, _ = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size)
        else:
            o, _ = naive_gated_delta_rule(q, k, v, g, beta)
        o = self.o_norm(o.transpose(1, 2), self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V))

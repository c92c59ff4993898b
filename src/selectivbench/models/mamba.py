"""Mamba-1: mamba_ssm's `Mamba` block with the selective (S6) scan (ARCHITECTURES.md §2.7, §3.6).

Kernel layout (time-major, like the layer's projections): ``u, delta (B, T, D)``,
``A (D, N)``, ``B, C (B, T, N)``, state ``h (B, D, N)``. The recurrence per channel c is

    h_t = exp(delta_t[c] A[c]) * h_{t-1} + delta_t[c] u_t[c] B_t,    y_t[c] = <C_t, h_t[c]>

(the D skip and the SiLU(z) gate are applied by the layer). Both kernels compute in fp32
(fp64 when given fp64) whatever the input dtype, and return ``(y, final_state)``.

Why the chunked kernel is not the masked quadratic form of §3.6 option 1: the decay depends
on (t, channel, state), so the quadratic form needs C_s/2 times more exp/mul work than the
scan and a (B, C_s, C_s, D, N) tensor; measured on CPU (d 256, B 8, T 400, fwd+bwd) it was
3x (C_s = 4) to 20x (C_s = 16) *slower* than the naive loop. What makes the naive loop slow
is autograd: it keeps every h_t (a (B, T, D, N) tensor: 3.4 GB at d 256, B 64, T 400, N 64)
and replays T small steps. `chunk_selective_scan` runs the same exact recurrence without
autograd, stores only the states entering each chunk of `chunk_size` steps, and in backward
recomputes one chunk's states at a time and runs the adjoint (reverse) recurrence by hand.
Memory: (B, T/C_s, N, D) saved states + one chunk of states in backward. Two backends:
"step" (CPU default): in-place ops on cache-sized (B, N, D) buffers, one step at a time;
"block" (CUDA default): 16-step blocks fused by torch.compile (see the block section).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models.layers import ShortConv, pad_time
from selectivbench.models.registry import Mixer, register


def _check_scan_inputs(u, delta, A, B, C, initial_state) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, time, channels), got shape {tuple(u.shape)}")
    Bsz, T, D = u.shape
    if T < 1:
        raise ValueError("selective scan needs at least one time step (u has T = 0)")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != D:
        raise ValueError(f"A must be (channels={D}, d_state), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (Bsz, T, N):
            raise ValueError(f"{name} must be (batch, time, d_state) = {(Bsz, T, N)}, got {tuple(t.shape)}")
    if initial_state is not None and initial_state.shape != (Bsz, D, N):
        raise ValueError(f"initial_state must be (batch, channels, d_state) = {(Bsz, D, N)}, got {tuple(initial_state.shape)}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 (the test reference)."""
    return torch.promote_types(x.dtype, torch.float32)


@torch.compiler.disable
def naive_selective_scan(u, delta, A, B, C, initial_state=None):
    """Reference: one recurrence step at a time under autograd (mamba_ssm's selective_scan_ref)."""
    _check_scan_inputs(u, delta, A, B, C, initial_state)
    dtype = _compute_dtype(u)
    with torch.autocast(u.device.type, enabled=False):
        uf, df, Af, Bf, Cf = (t.to(dtype) for t in (u, delta, A, B, C))
        Bsz, T, D = u.shape
        h = uf.new_zeros(Bsz, D, A.shape[1]) if initial_state is None else initial_state.to(dtype)
        ys = []
        for t in range(T):
            decay = torch.exp(df[:, t, :, None] * Af)
            h = decay * h + (df[:, t] * uf[:, t])[..., None] * Bf[:, t, None, :]
            ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, t]))
        y = torch.stack(ys, dim=1)
    return y.to(u.dtype), h


class _StepSelectiveScan(torch.autograd.Function):
    """Exact step recurrence without autograd; saves only the states entering each chunk.

    Inside, states are laid out (B, N, D): the per-step reductions over N then become
    row-vector x matrix products (`bmm(C_t, h)`), which are ~10x faster on CPU than
    reducing the innermost dim of (B, D, N).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size: int):
        Bsz, T, D = u.shape
        At = A.t().contiguous()  # (N, D)
        du = delta * u
        y = u.new_empty(Bsz, T, D)
        chunk_starts = u.new_empty(Bsz, math.ceil(T / chunk_size), *At.shape)
        h = h0.transpose(1, 2).contiguous()
        decay = torch.empty_like(h)
        for t in range(T):
            if t % chunk_size == 0:
                chunk_starts[:, t // chunk_size] = h
            torch.mul(delta[:, t, None, :], At, out=decay).exp_()
            h.mul_(decay).addcmul_(B[:, t, :, None], du[:, t, None, :])
            y[:, t] = torch.bmm(C[:, t, None, :], h).squeeze(1)
        ctx.save_for_backward(u, delta, At, B, C, chunk_starts)
        ctx.chunk_size = chunk_size
        return y, h.transpose(1, 2)

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, At, B, C, chunk_starts = ctx.saved_tensors
        cs = ctx.chunk_size
        Bsz, T, D = u.shape
        du = delta * u
        dy = dy.contiguous()
        # g_t = dL/dh_t through y_t and h_{t+1}: the adjoint recurrence g_t = a_{t+1} g_{t+1} + C_t dy_t
        g = dh_last.transpose(1, 2).contiguous()
        decay, decay_next = torch.empty_like(g), torch.ones_like(g)
        q = torch.empty_like(g)  # dL/d(delta_t A) at one step
        dAt = torch.zeros_like(g)  # sum over time of delta_t * q_t, per batch row
        gB = torch.empty_like(u)  # <B_t, g_t> per channel
        dq = torch.empty_like(u)  # <A, q_t> per channel
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        H = u.new_empty(Bsz, min(cs, T), *At.shape)  # the states of one chunk
        for c in reversed(range(chunk_starts.shape[1])):
            s, e = c * cs, min((c + 1) * cs, T)
            h = chunk_starts[:, c]
            for i, t in enumerate(range(s, e)):  # recompute this chunk's states
                torch.mul(delta[:, t, None, :], At, out=decay).exp_()
                h = torch.mul(h, decay, out=H[:, i]).addcmul_(B[:, t, :, None], du[:, t, None, :])
            dC[:, s:e] = torch.einsum("bcnd,bcd->bcn", H[:, : e - s], dy[:, s:e])
            for i in reversed(range(e - s)):
                t = s + i
                torch.mul(delta[:, t, None, :], At, out=decay).exp_()
                g.mul_(decay_next).addcmul_(C[:, t, :, None], dy[:, t, None, :])
                gB[:, t] = torch.bmm(B[:, t, None, :], g).squeeze(1)
                dB[:, t] = torch.bmm(g, du[:, t, :, None]).squeeze(-1)
                h_prev = H[:, i - 1] if i > 0 else chunk_starts[:, c]
                torch.mul(g, h_prev, out=q).mul_(decay)
                dAt.addcmul_(q, delta[:, t, None, :])
                dq[:, t] = q.mul_(At).sum(1)
                decay, decay_next = decay_next, decay
        dh0 = g.mul_(decay_next).transpose(1, 2) if ctx.needs_input_grad[5] else None
        return gB * delta, gB * u + dq, dAt.sum(0).t(), dB, dC, dh0, None


# ---------------------------------------------------------------- block backend (GPU)
#
# On a GPU the step backend is launch-bound (~25 small kernels per time step). The block
# backend runs the same recurrence in blocks of BLOCK steps written as plain out-of-place
# functions that torch.compile fuses into a few kernels per block (the unrolled block is
# what compiles: longer blocks compile more slowly). Same checkpointing: the states entering
# each chunk are saved; backward recomputes the block starts of one chunk, then each block
# recomputes its own states and runs the adjoint. Inputs are re-laid out as contiguous
# (n_blocks, B, BLOCK, .) so every call sees the same strides whatever T is (no recompiles).

BLOCK = 16


def _block_forward(h, delta, du, B, C, At):
    """BLOCK steps from state h (B, N, D); delta, du (B, L, D); B, C (B, L, N) -> y (B, L, D), h."""
    ys = []
    for i in range(delta.shape[1]):
        h = torch.exp(delta[:, i, None, :] * At) * h + B[:, i, :, None] * du[:, i, None, :]
        ys.append((C[:, i, :, None] * h).sum(1))
    return torch.stack(ys, 1), h


def _block_backward(h0, g, decay_next, delta, du, B, C, dy, At):
    """Adjoint of `_block_forward`. g is dL/dh of the block's last step before the decay of the
    step after it (decay_next) is applied; returns the same pair for the block's first step."""
    L = delta.shape[1]
    hs, h = [], h0
    for i in range(L):
        h = torch.exp(delta[:, i, None, :] * At) * h + B[:, i, :, None] * du[:, i, None, :]
        hs.append(h)
    gB, dB, dC, dq = [None] * L, [None] * L, [None] * L, [None] * L
    dAt = torch.zeros_like(h0)
    for i in reversed(range(L)):
        decay = torch.exp(delta[:, i, None, :] * At)
        g = g * decay_next + C[:, i, :, None] * dy[:, i, None, :]
        gB[i] = (B[:, i, :, None] * g).sum(1)
        dB[i] = (g * du[:, i, None, :]).sum(2)
        dC[i] = (hs[i] * dy[:, i, None, :]).sum(2)
        q = g * (hs[i - 1] if i > 0 else h0) * decay
        dAt = dAt + q * delta[:, i, None, :]
        dq[i] = (q * At).sum(1)
        decay_next = decay
    stack = lambda xs: torch.stack(xs, 1)  # noqa: E731
    return g, decay_next, stack(gB), stack(dB), stack(dC), stack(dq), dAt


_compiled_blocks: dict = {}


def _block_functions(device_type: str):
    """torch.compile'd block functions on CUDA (compiled once per process), plain elsewhere."""
    if device_type != "cuda":
        return _block_forward, _block_backward
    if not _compiled_blocks:
        _compiled_blocks["fns"] = (torch.compile(_block_forward, dynamic=False),
                                   torch.compile(_block_backward, dynamic=False))
    return _compiled_blocks["fns"]


def _to_blocks(x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """(B, T, .) -> contiguous (n_blocks, B, BLOCK, .), zero-padded in time (identity steps)."""
    x = pad_time(x, BLOCK)
    return x.view(x.shape[0], n_blocks, BLOCK, x.shape[-1]).transpose(0, 1).contiguous()


def _from_blocks(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[-1])[:, :T]


class _BlockSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk_size: int):
        Bsz, T, D = u.shape
        fwd, _ = _block_functions(u.device.type)
        n_blocks = math.ceil(T / BLOCK)
        per_chunk = max(1, chunk_size // BLOCK)  # blocks between saved states
        At = A.t().contiguous()
        # delta = 0 and du = 0 on padded steps: decay 1, no input, the state passes through
        dlt, dub, Bb, Cb = (_to_blocks(x, n_blocks) for x in (delta, delta * u, B, C))
        h = h0.transpose(1, 2).contiguous()
        ys, starts = [], []
        for j in range(n_blocks):
            if j % per_chunk == 0:
                starts.append(h)
            y, h = fwd(h, dlt[j], dub[j], Bb[j], Cb[j], At)
            ys.append(y)
        ctx.save_for_backward(u, delta, At, B, C, torch.stack(starts))
        ctx.per_chunk = per_chunk
        return _from_blocks(torch.stack(ys), T), h.transpose(1, 2)

    @staticmethod
    def backward(ctx, dy, dh_last):
        u, delta, At, B, C, starts = ctx.saved_tensors
        Bsz, T, D = u.shape
        fwd, bwd = _block_functions(u.device.type)
        n_blocks, per_chunk = math.ceil(T / BLOCK), ctx.per_chunk
        dlt, dub, Bb, Cb, dyb = (_to_blocks(x, n_blocks) for x in (delta, delta * u, B, C, dy))
        g = dh_last.transpose(1, 2).contiguous()
        decay_next = torch.ones_like(g)
        gB, dB, dC, dq = ([None] * n_blocks for _ in range(4))
        dAt = torch.zeros_like(g)
        for c in reversed(range(len(starts))):
            blocks = range(c * per_chunk, min((c + 1) * per_chunk, n_blocks))
            block_starts, h = [], starts[c]
            for j in blocks:  # recompute the states entering each block of this chunk
                block_starts.append(h)
                if j != blocks[-1]:
                    _, h = fwd(h, dlt[j], dub[j], Bb[j], Cb[j], At)
            for j, h_j in zip(reversed(blocks), reversed(block_starts)):
                g, decay_next, gB[j], dB[j], dC[j], dq[j], dAt_j = bwd(
                    h_j, g, decay_next, dlt[j], dub[j], Bb[j], Cb[j], dyb[j], At)
                dAt += dAt_j
        gB, dB, dC, dq = (_from_blocks(torch.stack(x), T) for x in (gB, dB, dC, dq))
        dh0 = (g * decay_next).transpose(1, 2) if ctx.needs_input_grad[5] else None
        return gB * delta, gB * u + dq, dAt.sum(0).t(), dB, dC, dh0, None


BACKENDS = {"step": _StepSelectiveScan, "block": _BlockSelectiveScan}


@torch.compiler.disable  # Python loops over T: let torch.compile graph-break here instead of unrolling them
def chunk_selective_scan(u, delta, A, B, C, chunk_size: int = 64, initial_state=None, backend: str | None = None):
    """Selective scan with chunk-boundary checkpoints and a hand-written adjoint (see module doc).

    ``backend``: "step" (in-place per-step loop, the CPU default) or "block" (torch.compile'd
    16-step blocks on CUDA, the CUDA default; runs uncompiled elsewhere). The environment
    variable SELECTIVBENCH_SCAN_BACKEND overrides the default.
    Returns ``(y (B, T, D) in u's dtype, final_state (B, D, N) in the compute dtype)``.
    """
    _check_scan_inputs(u, delta, A, B, C, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if backend is None:
        backend = os.environ.get("SELECTIVBENCH_SCAN_BACKEND") or ("block" if u.is_cuda else "step")
    if backend not in BACKENDS:
        raise ValueError(f"selective scan backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    dtype = _compute_dtype(u)
    Bsz, T, D = u.shape
    h0 = u.new_zeros(Bsz, D, A.shape[1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    with torch.autocast(u.device.type, enabled=False):
        args = (t.to(dtype).contiguous() for t in (u, delta, A, B, C))
        y, h = BACKENDS[backend].apply(*args, h0.contiguous(), chunk_size)
    return y.to(u.dtype), h


@register("mamba")
class Mamba(Mixer):
    """mamba_ssm 2.2.4 `Mamba(d_model, d_state, d_conv=4, expand=2)` with its default inits."""

    default_d_state = 64  # SELECTIVBENCH §15.2 (the published train.py would pass 128)
    default_chunk_size = 64
    summary = "Mamba-1: selective S6 scan, per-(channel, state) input-dependent decay exp(delta*A)"

    def __init__(self, d_model: int, n_head: int = 1, d_state: int = 64, chunk_size: int = 64,
                 d_conv: int = 4, expand: int = 2, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model, self.d_state, self.chunk_size = d_model, d_state, chunk_size
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = ShortConv(self.d_inner, d_conv, bias=True, activation=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log._no_weight_decay = True  # as mamba_ssm marks them
        self.D._no_weight_decay = True
        with torch.no_grad():
            # dt_proj init of mamba_ssm: weight U(+-dt_rank^-0.5); bias = softplus^-1(dt), dt log-uniform
            std = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def state_size(self) -> int:
        return self.d_inner * self.d_state

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = self.conv1d(x)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # like mamba_ssm: the dt_proj matmul in the working dtype, bias + softplus in fp32
        delta = F.softplus(F.linear(dt, self.dt_proj.weight).float() + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        if self.mode == "chunk":
            y, _ = chunk_selective_scan(x.float(), delta, A, B, C, chunk_size=self.chunk_size)
        else:
            y, _ = naive_selective_scan(x.float(), delta, A, B, C)
        y = (y + x.float() * self.D.float()) * F.silu(z.float())
        return self.out_proj(y.to(z.dtype))

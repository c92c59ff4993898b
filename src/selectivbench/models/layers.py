"""Building blocks shared by several mixers (fla / mamba_ssm conventions, see ARCHITECTURES.md §0, §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConv(nn.Module):
    """Depthwise causal Conv1d over time (left padding kernel-1), optionally followed by SiLU.

    fla's ShortConvolution has no bias; mamba_ssm's conv has one. Input/output: (B, T, C).
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=0, bias=bias)
        self.kernel_size = kernel_size
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ShortConv.apply(x, self.conv.weight, self.conv.bias, self.activation)


class _ShortConv(torch.autograd.Function):
    """ShortConv's pad -> depthwise conv -> SiLU, saving only the input x (B, T, C): backward
    recomputes the padded input and the conv output, which autograd would keep (2 extra bytes
    per element in bf16). Runs in the conv's dtype (bf16 under autocast) both ways."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        pad = weight.shape[-1] - 1
        y = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), weight, bias, groups=weight.shape[0])
        ctx.save_for_backward(x, weight, bias)
        ctx.activation, ctx.dtype = activation, y.dtype
        return (F.silu(y) if activation else y).transpose(1, 2)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dt, channels, pad = ctx.dtype, weight.shape[0], weight.shape[-1] - 1
        with torch.autocast(x.device.type, enabled=False):
            xp, w = F.pad(x.transpose(1, 2).to(dt), (pad, 0)), weight.to(dt)
            dy = dout.transpose(1, 2).to(dt)
            if ctx.activation:
                y = F.conv1d(xp, w, None if bias is None else bias.to(dt), groups=channels)
                dy = torch.ops.aten.silu_backward(dy, y)
            need = ctx.needs_input_grad
            dx, dw, db = torch.ops.aten.convolution_backward(
                dy, xp, w, None if bias is None else [channels], [1], [0], [1], False, [0], channels,
                [need[0], need[1], bias is not None and need[2]])
        return (None if dx is None else dx[..., pad:].transpose(1, 2).to(x.dtype),
                None if dw is None else dw.to(weight.dtype), None if db is None else db.to(bias.dtype), None)


def qkv_projections(d_model: int, key_dim: int, value_dim: int, n_sub: int = 1) -> tuple[nn.Linear, ...]:
    """The delta family's bias-free q, k, v projections, created in fla's order (q, k, v: the
    init draws from the RNG in this order). k and v carry n_sub sub-steps per token (Gated
    DeltaProduct's Householder steps)."""
    return (nn.Linear(d_model, key_dim, bias=False), nn.Linear(d_model, key_dim * n_sub, bias=False),
            nn.Linear(d_model, value_dim * n_sub, bias=False))


def qkv_short_convs(key_dim: int, value_dim: int, conv_size: int, n_sub: int = 1) -> tuple[ShortConv, ...]:
    """fla's short convolutions on q, k, v (created in that order), widths as `qkv_projections`."""
    return ShortConv(key_dim, conv_size), ShortConv(key_dim * n_sub, conv_size), ShortConv(value_dim * n_sub, conv_size)


BACKWARD_SLICE = 2**25  # elements per fp32 temporary of the sliced backwards (here and the delta rule's): 128 MiB


def row_blocks(rows: int, row_len: int) -> list[slice]:
    """Slices of `rows` rows holding at most BACKWARD_SLICE elements each: a row-wise backward
    done block by block keeps its fp32 temporaries that small (read at call time)."""
    step = max(1, BACKWARD_SLICE // max(1, row_len))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class _L2Norm(torch.autograd.Function):
    """x / sqrt(Σx² + eps) over the last dim in fp32. Saves x (its own dtype) and the per-row
    scale instead of autograd's fp32 copies: 4–6 bytes less per element (bf16)."""

    @staticmethod
    def forward(ctx, x, eps):
        D = x.shape[-1]
        x2 = x.reshape(-1, D)
        out, rstd = torch.empty_like(x2), x2.new_empty(len(x2), 1, dtype=torch.float32)
        for r in row_blocks(len(x2), D):  # row blocks: bounded fp32 temporaries
            xf = x2[r].float()
            rstd[r] = torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)
            out[r] = xf * rstd[r]
        ctx.save_for_backward(x, rstd)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x, rstd = ctx.saved_tensors
        D = x.shape[-1]
        x2, rstd2, dy2 = x.reshape(-1, D), rstd.reshape(-1, 1), dy.reshape(-1, D)
        dx = torch.empty_like(x2)
        for r in row_blocks(len(x2), D):
            n, dn = x2[r].float() * rstd2[r], dy2[r].float()
            dx[r] = rstd2[r] * (dn - n * (dn * n).sum(-1, keepdim=True))
        return dx.view(x.shape), None


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's L2 normalisation: eps inside the square root, computed in fp32."""
    return _L2Norm.apply(x, eps)


class _RMSNorm(torch.autograd.Function):
    """y = x·rstd·w in fp32, rounded to x's dtype; with a gate, y·silu(gate) (fla's
    FusedRMSNormGated) or, gate_first, the norm of x·silu(gate) (mamba_ssm's RMSNormGated with
    norm_before_gate=False). Saves the inputs and the per-row rstd; backward recomputes the rest
    (autograd would keep 3–4 fp32 copies of x)."""

    @staticmethod
    def forward(ctx, x, weight, gate, eps, gate_first=False):
        D = x.shape[-1]
        x2, gate2 = x.reshape(-1, D), None if gate is None else gate.reshape(-1, D)
        out_dtype = torch.promote_types(x.dtype, torch.float32) if gate_first else x.dtype
        out, rstd = x2.new_empty(x2.shape, dtype=out_dtype), x2.new_empty(len(x2), 1, dtype=torch.float32)
        for r in row_blocks(len(x2), D):  # row blocks: bounded fp32 temporaries
            x_in = x2[r] * F.silu(gate2[r].float()) if gate_first else x2[r]
            xf = x_in.float()
            rstd[r] = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
            y = (xf * rstd[r] * weight.float()).to(x_in.dtype)
            out[r] = y if gate is None or gate_first else (y.float() * F.silu(gate2[r].float())).to(x.dtype)
        ctx.save_for_backward(x, weight, gate, rstd)
        ctx.gate_first = gate_first
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, dout):
        x, weight, gate, rstd = ctx.saved_tensors
        D = x.shape[-1]
        flat = lambda t: None if t is None else t.reshape(-1, t.shape[-1])  # noqa: E731
        x2, gate2, rstd2, dout2 = flat(x), flat(gate), flat(rstd), flat(dout)
        dx, dgate = torch.empty_like(x2), None if gate is None else torch.empty_like(gate2)
        dw = torch.zeros(D, dtype=torch.float32, device=x.device)
        for r in row_blocks(len(x2), D):
            dx[r], dw_r, dgate_r = _RMSNorm._backward(x2[r], weight, None if gate is None else gate2[r], rstd2[r],
                                                      dout2[r], ctx.gate_first)
            dw += dw_r
            if dgate is not None:
                dgate[r] = dgate_r
        return dx.view(x.shape), dw.to(weight.dtype), None if dgate is None else dgate.view(gate.shape), None, None

    @staticmethod
    def _backward(x, weight, gate, rstd, dout, gate_first):
        """Rows of x (R, D): (dx, dweight summed over the rows, dgate), all fp32."""
        w, dy = weight.float(), dout.float()
        dgate = None
        if gate is not None:
            gf = gate.float()
            sig = torch.sigmoid(gf)
            dsilu = sig * (1 + gf * (1 - sig))
        if gate_first:
            n = (x * (gf * sig)).float() * rstd
        else:
            n = x.float() * rstd
            if gate is not None:
                y = (n * w).to(x.dtype).float()  # the rounded y of the forward
                dgate = dy * y * dsilu
                dy = dy * (gf * sig)
        dw = (dy * n).sum(0)
        dn = dy * w
        dx = rstd * (dn - n * (dn * n).mean(-1, keepdim=True))
        if gate_first:  # dx is the gradient of x·silu(gate)
            dgate = dx * x.float() * dsilu
            dx = dx * (gf * sig)
        return dx, dw, dgate


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learnable weight (fla/mamba default: no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RMSNorm.apply(x, self.weight, None, self.eps)

    def gate_first(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """rmsnorm(x·silu(gate))·w, fused (mamba_ssm's RMSNormGated, norm_before_gate=False)."""
        return _RMSNorm.apply(x, self.weight, gate, self.eps, True)


class GatedRMSNorm(RMSNorm):
    """fla FusedRMSNormGated (swish gate): ``rmsnorm(o) * w * silu(g)``, normalise then gate."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _RMSNorm.apply(x, self.weight, gate, self.eps)


def pad_time(x: torch.Tensor, multiple: int, dim: int = 1) -> torch.Tensor:
    """Right-pad ``dim`` with zeros to a multiple of ``multiple`` (identity steps for the kernels)."""
    T = x.shape[dim]
    pad = (-T) % multiple
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def segsum_decay(x: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = exp(Σ_{j<s<=i} x_s) for j <= i, 0 for j > i; x (..., n) -> (..., n, n).

    The segment sums are a masked cumsum of the raw values (mamba's ssd_minimal `segsum`),
    not a difference of cumsums, so they stay exact when the decays are large (pitfall P3).
    Above the diagonal the masked cumsum is 0, so exp never sees a positive exponent there
    (pitfall P1) and the entries are zeroed after exp (masking with −inf instead would hit
    exp's slow path on x86 CPUs).
    """
    n = x.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    strict = lower.tril(-1)
    segsum = x.unsqueeze(-1).expand(*x.shape, n).masked_fill(~strict, 0).cumsum(-2)
    return segsum.exp().masked_fill(~lower, 0)

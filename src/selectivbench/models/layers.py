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
        y = self.conv(F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))).transpose(1, 2)
        return F.silu(y) if self.activation else y


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's L2 normalisation: eps inside the square root, computed in fp32."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learnable weight (fla/mamba default: no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """fla FusedRMSNormGated (swish gate): ``rmsnorm(o) * w * silu(g)``, normalise then gate."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = super().forward(x).float() * F.silu(gate.float())
        return y.to(x.dtype)


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

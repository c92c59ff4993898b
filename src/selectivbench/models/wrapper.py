"""RecNet: encoder -> n_layers x [mixer -> dropout -> residual -> post-LayerNorm] -> decoder (spec §10.1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from selectivbench.models.registry import count_parameters, get_mixer


def get_num_heads(feat_size: int, max_head_size: int = 128) -> int:
    """4 heads if feat/128 <= 4, else the smallest power of two >= 4 dividing feat with head size <= 128."""
    if feat_size / max_head_size <= 4:
        return 4
    n = 4
    while n <= feat_size:
        if feat_size % n == 0 and feat_size // n <= max_head_size:
            return n
        n *= 2
    raise ValueError(f"no power-of-two head count fits feat_size={feat_size}")


class SkippedSize(ValueError):
    """Raised when an architecture does not exist at a nominal feat_size (transformer @ 960)."""


class RecNet(nn.Module):
    def __init__(
        self,
        arch: str,
        feat_size: int,
        vocab: int,
        num_classes: int,
        n_layers: int = 8,
        d_state: int | None = None,
        dropout: float = 0.2,
        chunk_size: int | None = None,
        recompute: bool = False,
    ):
        super().__init__()
        mixer_cls = get_mixer(arch)
        width = mixer_cls.model_width(feat_size)
        if width is None:
            raise SkippedSize(f"architecture {arch!r} has no model at feat_size={feat_size} (skipped in the paper)")
        n_head = get_num_heads(feat_size)  # from the nominal size, as the reference does
        self.arch, self.feat_size, self.width, self.n_head = arch, feat_size, width, n_head
        self.d_state = d_state if d_state is not None else mixer_cls.default_d_state
        self.chunk_size = chunk_size if chunk_size is not None else mixer_cls.default_chunk_size
        self.encoder = nn.Linear(vocab, width)
        self.mixers = nn.ModuleList(
            mixer_cls(d_model=width, n_head=n_head, d_state=self.d_state, chunk_size=self.chunk_size)
            for _ in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(width, num_classes)
        # activation recomputation: keep only each layer's input for backward and run the layer's
        # forward again there (one extra forward; the saved activations of 8 layers -> of 1)
        self.recompute = recompute

    @property
    def recompute(self) -> bool:
        return self._recompute

    @recompute.setter
    def recompute(self, value: bool | str) -> None:
        # a bool, or the config key's "true"/"false"; "auto" is decided by the training run
        # (train.Run.memory_plan: does a step fit without it?), not by the model
        flag = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
        if not isinstance(flag, bool):
            raise ValueError(f"RecNet.recompute must be True/False (or 'true'/'false'), got {value!r}; "
                             "'auto' is resolved by selectivbench.train (step_fits)")
        self._recompute = flag

    def set_mode(self, mode: str) -> None:
        """Switch every mixer between its chunked kernel ("chunk") and the naive recurrence ("naive")."""
        if mode not in ("chunk", "naive"):
            raise ValueError(f"mode must be 'chunk' or 'naive', got {mode!r}")
        for m in self.mixers:
            m.mode = mode

    def block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i: mixer -> dropout -> residual -> norm."""
        return self.norms[i](h + self.dropout(self.mixers[i](h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for i in range(len(self.mixers)):
            if self.recompute and torch.is_grad_enabled():
                # non-reentrant checkpoint: restores the RNG state (same dropout masks) and the
                # autocast state when it replays the layer in backward
                h = checkpoint(self.block, i, h, use_reentrant=False)
            else:
                h = self.block(i, h)
        return self.decoder(h)

    def num_parameters(self) -> int:
        return count_parameters(self)

    def state_size_per_layer(self) -> int:
        return self.mixers[0].state_size()

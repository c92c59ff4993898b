"""A tiny real architecture, defined outside the package: adding one is this one file.

`toy_ema` is a data-gated exponential moving average per channel (a GRU without reset gate):

    a_t = sigmoid(W_a x_t),   h_t = a_t * h_{t-1} + (1 - a_t) * (W_v x_t),   y_t = W_o h_t

It is registered with `@register`, and a run picks it up with `--set plugins=[tests/toy_arch.py]`
(loaded by `selectivbench.models.load_plugins`). The tests use it because it is fast on CPU.
Like the real mixers it has a chunked kernel and the naive recurrence it must agree with; the
gate is kept in log space and the state in fp32.
"""

import torch
import torch.nn.functional as F
from torch import nn

from selectivbench.models import Mixer, register


def naive_ema(u: torch.Tensor, log_a: torch.Tensor) -> torch.Tensor:
    """h_t = exp(log_a_t) * h_{t-1} + u_t, step by step. u, log_a: (B, T, D) fp32."""
    h = torch.zeros_like(u[:, 0])
    out = []
    for t in range(u.shape[1]):
        h = log_a[:, t].exp() * h + u[:, t]
        out.append(h)
    return torch.stack(out, 1)


def chunk_ema(u: torch.Tensor, log_a: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Same recurrence in chunks: a decay-weighted sum inside each chunk, the state passed between."""
    B, T, D = u.shape
    pad = (-T) % chunk_size  # padded steps: no decay, no input
    u, log_a = F.pad(u, (0, 0, 0, pad)), F.pad(log_a, (0, 0, 0, pad))
    n = u.shape[1] // chunk_size
    u, log_a = u.view(B, n, chunk_size, D), log_a.view(B, n, chunk_size, D)
    b = log_a.cumsum(2)  # inclusive cumulative log decay inside the chunk
    diff = b[:, :, :, None] - b[:, :, None, :]  # (B, n, i, j, D): log decay from step j to step i
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=u.device).tril()
    decay = diff.masked_fill(~causal[:, :, None], float("-inf")).exp()
    inner = torch.einsum("bnijd,bnjd->bnid", decay, u)
    h = u.new_zeros(B, D)
    out = []
    for c in range(n):
        y = inner[:, c] + b[:, c].exp() * h[:, None]
        h = y[:, -1]
        out.append(y)
    return torch.cat(out, 1)[:, :T]


@register("toy_ema")
class ToyEMA(Mixer):
    summary = "data-gated EMA per channel (test plugin)"
    default_chunk_size = 16

    def __init__(self, d_model, n_head, d_state, chunk_size):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.d_model, self.chunk_size = d_model, chunk_size

    def forward(self, x):
        v, g = self.in_proj(x).chunk(2, dim=-1)
        with torch.autocast(x.device.type, enabled=False):
            log_a = F.logsigmoid(g.float())
            u = torch.sigmoid(-g.float()) * v.float()  # (1 - a_t) * v_t
            h = naive_ema(u, log_a) if self.mode == "naive" else chunk_ema(u, log_a, self.chunk_size)
        return self.out_proj(h.to(x.dtype))

    def state_size(self):
        return self.d_model

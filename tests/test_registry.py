"""The registry and wrapper: an architecture defined only here trains through RecNet."""

import pytest
import torch
from torch import nn

from selectivbench.models import Mixer, RecNet, available, get_mixer, get_num_heads, register


@register("test_cumavg")
class CumulativeAverage(Mixer):
    """Causal running mean of a projection: the simplest real recurrent mixer."""

    summary = "running mean (test-only)"

    def __init__(self, d_model, n_head, d_state, chunk_size):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.d_model = d_model

    def forward(self, x):
        h = self.proj(x)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=h.dtype).view(1, -1, 1)
        if self.mode == "naive":
            s, out = torch.zeros_like(h[:, 0]), []
            for t in range(x.shape[1]):
                s = s + h[:, t]
                out.append(s / (t + 1))
            return torch.stack(out, 1)
        return h.cumsum(1) / steps

    def state_size(self):
        return self.d_model


@pytest.mark.parametrize(
    "feat, heads",
    [(256, 4), (384, 4), (512, 4), (648, 8), (768, 8), (960, 8), (1024, 8), (1152, 16), (1280, 16), (1296, 16)],
)
def test_get_num_heads_matches_spec_table(feat, heads):
    assert get_num_heads(feat) == heads


def test_toy_architecture_registers_and_trains_one_step():
    assert "test_cumavg" in available()
    torch.manual_seed(0)
    model = RecNet("test_cumavg", feat_size=16, vocab=5, num_classes=7, n_layers=2)
    x = torch.randn(3, 9, 5)
    y = torch.randint(0, 7, (3, 9))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.state_size_per_layer() == 16
    # the mode switch reaches the mixer and both paths agree
    model.eval()
    fast = model(x)
    model.set_mode("naive")
    torch.testing.assert_close(model(x), fast)


def test_unknown_architecture_lists_registered_ones():
    with pytest.raises(KeyError, match="test_cumavg"):
        get_mixer("no_such_arch")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register("test_cumavg")
        class Other(Mixer):
            pass


def test_register_needs_a_mixer():
    with pytest.raises(TypeError):
        register("not_a_mixer")(object)

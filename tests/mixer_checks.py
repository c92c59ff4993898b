"""Checks shared by the mixer test files (test_<arch>.py): the error metric, kernel and layer
gradients, the chunked-vs-naive layer comparison, causality / right padding, finiteness and
parameter counts. Each test file keeps its own shapes, seeds and tolerances."""

import copy

import torch
import torch.nn.functional as F

from selectivbench.models.layers import l2norm
from selectivbench.models.wrapper import RecNet

# ---------------------------------------------------------------- metric


def rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """fla's error metric RMS(x − ref) / RMS(ref); `floor` bounds the denominator from below
    (for a reference that is small by cancellation: judge against the scale it comes from).
    A reference below 1e-30 (0 up to underflow, e.g. a state gradient under total decay) is
    compared absolutely."""
    return rms(x.double() - ref.double()) / max(rms(ref), floor, 1e-30)


def assert_close(name, x, ref, tol, floor=0.0, zero_atol=None):
    """x finite and rel_err(x, ref, floor) ≤ tol. With zero_atol, a reference that is numerically 0
    (max |ref| ≤ 1e-9: a gradient that vanishes exactly, e.g. the decay's at T = 1 without an
    initial state) needs max |x| ≤ zero_atol instead."""
    assert torch.isfinite(x).all(), f"{name}: non-finite values"
    if zero_atol is not None and ref.abs().max() <= 1e-9:
        assert x.abs().max() <= zero_atol, f"{name}: reference is 0, got max |x| {x.abs().max():.2e}"
        return
    err = rel_err(x, ref, floor)
    assert err <= tol, f"{name}: rel RMS error {err:.2e} > {tol:.0e}"


def assert_all_close(got: dict, ref: dict, tol, tols=None, floors=None, zero_atol=None):
    """Same names in both, and every entry close (`tols`/`floors`: per-name overrides)."""
    tols, floors = tols or {}, floors or {}
    assert set(got) == set(ref), set(got) ^ set(ref)
    for name in ref:
        assert_close(name, got[name], ref[name], tols.get(name, tol), floors.get(name, 0.0), zero_atol)


def seeded_randn(shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- kernels


def run_with_grads(fn, inputs: dict, dtypes=None, outputs=("o", "S"), seed=1, **kw) -> dict:
    """Call fn(**inputs, **kw) with each input cast to dtypes[name] (default: as given; None
    stays None) and backpropagate a random linear loss on its output(s), drawn from `seed`.
    Returns {output name: value, "d" + input name: gradient}, in the dtypes fn produced."""
    dtypes = dtypes or {}
    leaves = {n: None if t is None else t.detach().to(dtypes.get(n, t.dtype)).requires_grad_()
              for n, t in inputs.items()}
    outs = fn(**leaves, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in outs)
    wrt = {n: t for n, t in leaves.items() if t is not None}
    grads = torch.autograd.grad(loss, list(wrt.values()))
    result = {name: o.detach() for name, o in zip(outputs, outs)}
    result.update({"d" + n: g for n, g in zip(wrt, grads)})
    return result


# ---------------------------------------------------------------- layers


def naive_copy(layer):
    """The reference: a float64 copy of `layer` running its naive step-by-step recurrence."""
    ref = copy.deepcopy(layer).double()
    ref.mode = "naive"
    return ref


def layer_grads(layer, x, dy) -> dict:
    """{"y": output, "dx": input grad, parameter name: its grad} for upstream gradient dy."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(dy.to(y.dtype))
    return {"y": y.detach(), "dx": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}


def chunk_and_naive_grads(layer, x, dy, autocast=False):
    """layer_grads of `layer` (its current mode; under CPU bf16 autocast if asked) and of its
    float64 naive copy on the same input."""
    ref = layer_grads(naive_copy(layer), x.double(), dy)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = layer_grads(layer, x, dy)
    return got, ref


def assert_finite_grads(layer, x, dy):
    """Output, input grad and every parameter grad finite (extreme gates, large inputs)."""
    for name, t in layer_grads(layer, x, dy).items():
        assert torch.isfinite(t).all(), name


def assert_causal_and_padding_invariant(layer, d, T, cuts=(), pads=(), causal_tol=(0.0, 0.0),
                                        pad_tol=(0.0, 1e-6), B=2, seed=4):
    """Redrawing the inputs after t leaves outputs up to t unchanged (to causal_tol = (rtol, atol);
    (0, 0): bit-identical) and does change those after t; right-padding with zeros leaves the
    first T outputs unchanged (to pad_tol: a longer T may change the projection GEMM's blocking)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, d, generator=gen)
    with torch.no_grad():
        y = layer(x)
        for t in cuts:
            x2 = x.clone()
            x2[:, t + 1:] = 10 * torch.randn(x2[:, t + 1:].shape, generator=gen)
            y2 = layer(x2)
            torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=causal_tol[0], atol=causal_tol[1])
            assert (y2[:, t + 1:] - y[:, t + 1:]).abs().max() > 1e-3, f"cut {t}: the change did not reach the output"
        for pad in pads:
            padded = layer(torch.cat([x, torch.zeros(B, pad, d)], dim=1))
            torch.testing.assert_close(padded[:, :T], y, rtol=pad_tol[0], atol=pad_tol[1])


def assert_parameter_count(arch, feat, expected_millions, **kw):
    """The §10.4 count (millions, 3 decimals; V = 41, C = 1601, 8 layers), built on the meta device."""
    with torch.device("meta"):
        net = RecNet(arch, feat, vocab=41, num_classes=1601, **kw)
    assert round(net.num_parameters() / 1e6, 3) == expected_millions, (arch, feat, kw)
    return net


# ---------------------------------------------------------------- delta family


def delta_inputs(B, H, T, K, V, seed, g_scale=0.2, beta_range=(0.0, 1.0), h0=False):
    """float64 inputs of the gated delta kernels: L2-normalised q/k, log-decay ≤ 0, β in beta_range."""
    gen = torch.Generator().manual_seed(seed)
    d = dict(dtype=torch.float64)
    x = dict(
        q=l2norm(torch.randn(B, H, T, K, generator=gen, **d)),
        k=l2norm(torch.randn(B, H, T, K, generator=gen, **d)),
        v=torch.randn(B, H, T, V, generator=gen, **d),
        g=F.logsigmoid(torch.randn(B, H, T, generator=gen, **d)) * g_scale,
        beta=beta_range[0] + (beta_range[1] - beta_range[0]) * torch.rand(B, H, T, generator=gen, **d),
    )
    x["initial_state"] = torch.randn(B, H, K, V, generator=gen, **d) if h0 else None
    return x


def delta_layer(cls, d=32, H=2, chunk_size=32, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return cls(d_model=d, n_head=H, chunk_size=chunk_size).to(dtype)


def check_delta_layer_fp32(cls, T, d=32, **kw):
    """fp32 chunked layer vs its float64 naive copy: output, input grad and every parameter grad."""
    x = seeded_randn((2, T, d), seed=T)
    got, ref = chunk_and_naive_grads(delta_layer(cls, d=d, **kw), x.float(), seeded_randn((2, T, d), 1))
    assert_all_close(got, ref, 1e-5, zero_atol=1e-5)


def check_delta_layer_bf16(cls, T=100, d=32, gate_params=(), **kw):
    """Pure-bf16 layer (how the paper runs the delta family) vs a float64 copy of its weights.

    The bf16 projections, convs and norms alone put some weight grads 1e-2…0.2 off the float64
    values (measured), so each error is compared with that of the same bf16 layer running the
    fp32 naive recurrence: the chunked kernel may add at most the kernel budget on top (1e-2;
    2e-2 for gate projections). A_log/dt_bias grads are H numbers, each a sum of B·T dg terms
    with heavy cancellation: bf16 matmuls inside the kernel put them up to ~0.1 off (vs up to
    0.06 with an all-fp32 kernel on the same bf16 inputs, measured over 16 seeds), so they get
    0.1 — a guard against gross errors; dg itself is held to 2e-2 at kernel level.
    """
    layer = delta_layer(cls, d=d, dtype=torch.bfloat16, **kw)
    x = torch.randn(2, T, d, generator=torch.Generator().manual_seed(0)).bfloat16()
    dy = seeded_randn((2, T, d), 1)
    got, ref = chunk_and_naive_grads(layer, x, dy)
    layer.mode = "naive"
    base = layer_grads(layer, x, dy)
    assert got["y"].dtype == torch.bfloat16
    assert rel_err(got["y"], ref["y"]) <= 1e-2 + rel_err(base["y"], ref["y"])
    for name in ref.keys() - {"y"}:  # dx and every parameter grad
        assert torch.isfinite(got[name]).all(), name
        tol = 0.1 if name in ("A_log", "dt_bias") else 2e-2 if name in gate_params else 1e-2
        assert rel_err(got[name], ref[name]) <= tol + rel_err(base[name], ref[name]), name


def check_delta_layer_autocast(cls, d=32, **kw):
    """CUDA training runs under autocast(bf16): the kernel keeps its fp32 parts and stays close."""
    layer = delta_layer(cls, d=d, **kw)
    x = torch.randn(2, 80, d, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y32 = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = layer(x)
    assert y16.dtype == torch.bfloat16
    assert_close("output", y16, y32, 2e-2)

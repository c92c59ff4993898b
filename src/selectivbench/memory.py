"""Device-free accounting of activation memory (bench/bench_memory.py, tests/test_recompute.py).

`LiveBytes` sees every op while active (a TorchDispatchMode, so autograd's backward ops too) and
keeps the bytes of the tensor storages they created that are still alive: its `peak` is what
`torch.cuda.max_memory_allocated` would count, minus kernel workspaces and allocator rounding,
on any device. Tensors created before it was entered (parameters, inputs) are not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created by ops while active and still alive (`now`), and their maximum (`peak`)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # outputs on an argument's storage (views, in-place and out= ops) allocate nothing new
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                key, n = st._cdata, st.nbytes()
                old = self.live.get(key)
                if old is None and key in inputs:
                    continue  # e.g. a view of a parameter: its memory predates the tracker
                if old is None:
                    # a storage keeps its Python object while any tensor uses it: the finalizer
                    # runs when the memory is released
                    weakref.finalize(st, self._free, key)
                if old != n:  # new, or resized in place (out= arguments)
                    self.live[key] = n
                    self.now += n - (old or 0)
        self.peak = max(self.peak, self.now)
        return out


def saved_tensor_bytes():
    """Context manager yielding a dict {storage data_ptr: bytes} of the tensors autograd saves
    for backward inside it (each storage once). Inside a checkpointed region the checkpoint's
    own hooks take precedence, so those tensors are not seen."""
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        saved.setdefault(st.data_ptr(), st.nbytes())
        return t

    class _Ctx(torch.autograd.graph.saved_tensors_hooks):
        def __enter__(self):
            super().__enter__()
            return saved

    return _Ctx(pack, lambda t: t)

"""One registry of sequence mixers, keyed by architecture name.

An architecture is a `Mixer` subclass decorated with `@register("name")`. The wrapper,
the training loop and the workflow only ever look mixers up here; nothing else tests
an architecture's name.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn

_MIXERS: dict[str, type["Mixer"]] = {}


class Mixer(nn.Module):
    """A token mixer: (B, T, d) -> (B, T, d), strictly causal.

    Subclasses take ``(d_model, n_head, d_state, chunk_size)`` in their constructor and
    may override the class hooks below. ``self.mode`` selects the kernel: ``"chunk"``
    (the fast path, default) or ``"naive"`` (the step-by-step reference recurrence).
    """

    #: default recurrent state size per channel (only Mamba-style mixers use it)
    default_d_state: int = 64
    #: default chunk length of the chunked kernel
    default_chunk_size: int = 64
    #: one-line description for `--help` / the taxonomy table
    summary: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "chunk"

    @classmethod
    def model_width(cls, feat_size: int) -> int | None:
        """Width actually built for a nominal feat_size; ``None`` = this size is skipped."""
        return feat_size

    def state_size(self) -> int:
        """Number of recurrent state elements per layer per sequence (0 if none is fixed)."""
        raise NotImplementedError


def register(name: str):
    """Class decorator: make a Mixer available under ``name``."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"@register({name!r}) needs a Mixer subclass, got {cls!r}")
        if name in _MIXERS and not _same_definition(_MIXERS[name], cls):
            raise ValueError(f"architecture {name!r} is already registered by {_MIXERS[name].__module__}")
        cls.arch_name = name
        _MIXERS[name] = cls
        return cls

    return deco


def _same_definition(a: type, b: type) -> bool:
    """The same class statement executed twice (a plugin file imported under two module names)."""
    import inspect

    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except TypeError:
        return a is b


_loaded = False
_loaded_plugins: set[str] = set()


def _load_builtin() -> None:
    """Import every module of ``selectivbench.models`` so their @register calls run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import selectivbench.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in {"registry", "wrapper", "layers"}:
            importlib.import_module(f"selectivbench.models.{info.name}")


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import extra modules (dotted names or ``.py`` paths) that register architectures; idempotent."""
    import importlib.util
    import os
    import sys

    for mod in modules:
        ident = os.path.realpath(mod) if (mod.endswith(".py") or os.sep in mod) else mod
        if ident in _loaded_plugins:
            continue
        if mod.endswith(".py") or os.sep in mod:
            if not os.path.exists(mod):
                raise FileNotFoundError(f"plugin module file not found: {mod}")
            modname = "selectivbench_plugin_" + os.path.splitext(os.path.basename(mod))[0]
            spec = importlib.util.spec_from_file_location(modname, mod)
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module  # importable by name: torch.compile looks modules up there
            spec.loader.exec_module(module)
        else:
            importlib.import_module(mod)
        _loaded_plugins.add(ident)


def available() -> list[str]:
    _load_builtin()
    return sorted(_MIXERS)


def get_mixer(name: str) -> type[Mixer]:
    _load_builtin()
    try:
        return _MIXERS[name]
    except KeyError:
        raise KeyError(
            f"unknown architecture {name!r}; registered: {', '.join(sorted(_MIXERS))}"
        ) from None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Mixer", "register", "available", "get_mixer", "load_plugins", "count_parameters"]

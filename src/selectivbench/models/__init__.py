"""Sequence mixers (one file each), their registry and the RecNet wrapper."""

from selectivbench.models.registry import Mixer, available, count_parameters, get_mixer, load_plugins, register
from selectivbench.models.wrapper import RecNet, get_num_heads

__all__ = ["Mixer", "RecNet", "available", "count_parameters", "get_mixer", "get_num_heads", "load_plugins", "register"]

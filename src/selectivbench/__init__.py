"""SelectivBench: ambiguous-grammar state tracking benchmark for linear recurrent models."""

__version__ = "0.1.0"

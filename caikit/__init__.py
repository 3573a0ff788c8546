"""caikit: turn a written constitution into alignment data and aligned models."""

__version__ = "0.1.0"

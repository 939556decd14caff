"""Model registry: one file per family; every module here registers itself on first use
of ``MODELS`` (see models/registry.py). Importing this package loads no torch."""

from models.registry import MODELS, Incompatible, InputSpec, ModelSpec, OutputShape, get_model, register_model

__all__ = ["MODELS", "Incompatible", "InputSpec", "ModelSpec", "OutputShape", "get_model", "register_model"]

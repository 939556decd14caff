"""Model registry. Importing this package registers every model family below."""

from models import attention, recurrent, transformer  # noqa: F401  (registration side effects)
from models.registry import MODELS, InputSpec, ModelSpec, get_model, register_model

__all__ = ["MODELS", "InputSpec", "ModelSpec", "get_model", "register_model"]

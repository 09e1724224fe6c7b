"""gptlab: a hackable GPT-2 with RoPE, GQA/MQA, sliding-window attention, RMSNorm and SwiGLU as switches.

The Python API (api.py): `from gptlab import train, compare`, the two commands as functions.
"""

from typing import Any

from .config import PRESETS, GPTConfig
from .model import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS", "compare", "get_tokenizer", "train"]
__version__ = "0.1.0"


def get_tokenizer(name: str):  # noqa: ANN201 - re-exported lazily so importing gptlab stays light
    """The tokenizer called `name` ("gpt2"); see gptlab.tokenizer."""
    from .tokenizer import get_tokenizer as _get

    return _get(name)


def __getattr__(name: str) -> Any:
    """gptlab.train and gptlab.compare on first use: importing gptlab stays light (no data, plots or HF)."""
    if name in ("train", "compare"):
        import importlib

        return importlib.import_module(f".{name}", __name__)  # a callable module (api.callable_module)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

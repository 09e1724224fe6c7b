"""gptlab: a hackable GPT-2 with RoPE, GQA/MQA, sliding-window attention, RMSNorm and SwiGLU as switches."""

from .config import PRESETS, GPTConfig
from .model import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS", "get_tokenizer"]
__version__ = "0.1.0"


def get_tokenizer(name: str):  # noqa: ANN201 - re-exported lazily so importing gptlab stays light
    """The tokenizer called `name` ("gpt2"); see gptlab.tokenizer."""
    from .tokenizer import get_tokenizer as _get

    return _get(name)

"""rgd-engine: reward-guided decoding with fused kernels and a per-user reward-head bank."""
from .config import EngineConfig, GenerationConfig  # noqa: F401
from .decoder import Decoder, Generation  # noqa: F401
from .engine import Engine  # noqa: F401
from .errors import (ConfigError, GenerationInputError, HeadBankError, ModelLoadError, PromptTooLongError,  # noqa: F401
                     RGDError, TokenizerMismatchError, UnknownUserError)
from .heads import HeadBank, TokenHeadBank, load_bank  # noqa: F401

__version__ = "0.1.0"

"""Model providers: OpenAI (and compatible servers), Anthropic, local transformers."""

from caikit.backends.base import Backend, BackendError, Completion, LogprobsUnsupported, Message, Usage

__all__ = ["Backend", "BackendError", "Completion", "LogprobsUnsupported", "Message", "Usage"]

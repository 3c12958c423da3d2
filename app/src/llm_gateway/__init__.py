"""llm-gateway: an OpenAI-compatible gateway that records every exchange in PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-gateway")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

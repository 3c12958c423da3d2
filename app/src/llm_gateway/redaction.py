"""What the log keeps of a request's headers and URL: no credentials, bounded sizes.

Redaction is by name pattern, not by a list of known names: any header or query
parameter whose name looks like it carries a credential (``x-goog-api-key``,
``ocp-apim-subscription-key``, ``?access_token=``, ...) is replaced, so a provider's new
header name is covered before anyone thinks of it. A false positive costs one logged
value; a false negative leaks a key to everyone who can read the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
_CREDENTIAL_NAME = re.compile(
    r"auth|key|token|secret|passw|pwd|cookie|sig|session|credential|bearer|jwt|otp", re.I
)
# A logged header value or URL longer than this is cut, with a marker saying how much.
MAX_LOGGED_VALUE_CHARS = 4096


@lru_cache(maxsize=2048)
def is_credential_name(name: str) -> bool:
    return _CREDENTIAL_NAME.search(name) is not None


def _bounded(text: str) -> str:
    if len(text) <= MAX_LOGGED_VALUE_CHARS:
        return text
    cut = len(text) - MAX_LOGGED_VALUE_CHARS
    return f"{text[:MAX_LOGGED_VALUE_CHARS]}...[truncated {cut} chars]"


def redacted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        headers[key] = REDACTED if is_credential_name(key) else _bounded(value.decode("latin-1"))
    return headers


def _redacted_query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        name, sep, _ = pair.partition("=")
        # Match on the decoded name, so "api%2Dkey" is caught like "api-key".
        parts.append(
            f"{name}={REDACTED}" if sep and is_credential_name(unquote_plus(name)) else pair
        )
    return "&".join(parts)


def logged_url(path: str, query_string: bytes) -> str:
    """The route and query as the log keeps them. Not the client's Host header: any
    client can send any Host (it is still in the logged headers)."""
    if not query_string:
        return _bounded(path)
    return _bounded(f"{path}?{_redacted_query(query_string.decode('latin-1'))}")

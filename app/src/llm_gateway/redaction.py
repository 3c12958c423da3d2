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
from itertools import islice
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
_CREDENTIAL_NAME = re.compile(
    r"auth|key|token|secret|pass|pwd|(?<![a-z])pw(?![a-z])|cookie|sig|session|credential"
    r"|bearer|jwt|otp|private|csrf|xsrf|hmac|refresh",
    re.I,
)
# A value is a credential whatever its name when it carries an auth scheme ("X-Custom:
# Bearer ...") or has the shape of a well-known key: OpenAI/Anthropic-style sk-, JWTs,
# AWS access key ids, GitHub and Slack tokens, Google API keys. Two patterns, because one
# alternation with look-behinds costs twice as much per value.
_AUTH_SCHEME_VALUE = re.compile(
    r"\s*(?:bearer|basic|digest|token|negotiate|ntlm|apikey|api-key|aws4-hmac-sha256"
    r"|sharedaccesssignature|dpop|gnap)\s+\S",
    re.I,
)
_KEY_SHAPED = re.compile(
    r"\b(?:[sSrRpP][kK]-[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|A[KS]IA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{8,}"
    r"|AIza[0-9A-Za-z_-]{30,})"
)
# user:password@ in a URL (Referer, Origin, a redirect parameter, ...).
_URL_PASSWORD = re.compile(r"(//[^/?#@\s:]*):[^/?#@\s]*@")
# name=value pairs inside a value (a URL's query in Referer or X-Original-URL, a
# cookie-like list): the value of a credential-looking name goes.
_EMBEDDED_PAIR = re.compile(r"(^|[?&;,]\s*)([^=?&;,#\s]+)=([^&;,#\s]*)")
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


def _embedded_pair(match: re.Match) -> str:
    start, name, _ = match.groups()
    return f"{start}{name}={REDACTED}" if is_credential_name(unquote_plus(name)) else match[0]


# Header values found to hold nothing to redact (user-agent, content-type, ...): most
# repeat from request to request, and a set lookup is ~20x cheaper than the patterns.
# Only clean values are kept, so no credential stays in memory here; cleared when full.
_CLEAN_VALUES: set[str] = set()
_CLEAN_VALUES_MAX = 4096
_CLEAN_VALUE_MAX_CHARS = 256


def redacted_value(value: str) -> str:
    """A header value (or a decoded query value) as the log keeps it: a credential by
    its shape is replaced whole; URL passwords and credential-named pairs inside it
    lose their values."""
    if value in _CLEAN_VALUES:
        return value
    if _AUTH_SCHEME_VALUE.match(value) or _KEY_SHAPED.search(value):
        return REDACTED
    cleaned = value
    if "@" in cleaned:
        cleaned = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", cleaned)
    if "=" in cleaned:
        cleaned = _EMBEDDED_PAIR.sub(_embedded_pair, cleaned)
    if cleaned == value and len(value) <= _CLEAN_VALUE_MAX_CHARS:
        if len(_CLEAN_VALUES) >= _CLEAN_VALUES_MAX:
            _CLEAN_VALUES.clear()
        _CLEAN_VALUES.add(value)
    return cleaned


def redacted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if is_credential_name(key):
            headers[key] = REDACTED
        else:
            headers[key] = _bounded(redacted_value(value.decode("latin-1")))
    return headers


# Pairs are split on ";" too: some servers and frameworks read "a=1;api-key=..." as two.
_QUERY_SEPARATOR = re.compile(r"([&;])")


def _redacted_pair(pair: str) -> str:
    name, sep, value = pair.partition("=")
    # Match on the decoded name, so "api%2Dkey" is caught like "api-key".
    if sep and is_credential_name(unquote_plus(name)):
        return f"{name}={REDACTED}"
    plain = unquote_plus(value if sep else name)
    if redacted_value(plain) != plain:  # a key, a Bearer value, a URL with a password
        return f"{name}={REDACTED}" if sep else REDACTED
    return pair


def _redacted_query(query: str) -> str:
    parts = _QUERY_SEPARATOR.split(query)
    # Separators sit at the odd indexes; the pairs between them.
    return "".join(part if i % 2 else _redacted_pair(part) for i, part in enumerate(parts))


# Top-level request body fields that carry a provider credential (LiteLLM clients send
# api_key, aws_secret_access_key, vertex_credentials, azure_ad_token, ... in the body).
# Narrower than the header pattern: max_tokens, prompt_cache_key and the like are no
# credentials.
_CREDENTIAL_FIELD = re.compile(
    r"api[-_]?key|secret|passw|credential|authorization|private[-_]?key"
    r"|(?:access|refresh|session|id|auth|bearer|ad)[-_]?token|^(?:key|token)$",
    re.I,
)
# Only this many top-level fields are looked at: real bodies have a handful, and a body
# of a million keys must not buy a million pattern matches on the event loop.
_MAX_FIELDS_CHECKED = 256


@lru_cache(maxsize=1024)
def is_credential_field(name: str) -> bool:
    return _CREDENTIAL_FIELD.search(name) is not None


def redacted_body(body: Any) -> Any:
    """The request body as the log keeps it: a credential-named top-level string field
    is replaced (the upstream still gets the body as sent)."""
    if not isinstance(body, dict):
        return body
    secret = [
        name
        for name in islice(body, _MAX_FIELDS_CHECKED)
        if is_credential_field(name) and isinstance(body[name], str)
    ]
    return {**body, **dict.fromkeys(secret, REDACTED)} if secret else body


def logged_url(path: str, query_string: bytes) -> str:
    """The route and query as the log keeps them. Not the client's Host header: any
    client can send any Host (it is still in the logged headers)."""
    if not query_string:
        return _bounded(path)
    return _bounded(f"{path}?{_redacted_query(query_string.decode('latin-1'))}")

"""Bearer-key authentication. Keys are compared by SHA-256 so raw keys are never stored in
the lookup table; rows record the key's alias, never the key."""

from collections.abc import Iterable

from llm_gateway.config import hash_key

REDACTED = "[REDACTED]"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)


def key_alias(authorization: str | None, aliases: dict[str, str]) -> str | None:
    """Alias of the presented key, or None when missing/unknown."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return aliases.get(hash_key(token.strip()))


class KeyCache:
    """Remembers the alias of valid Authorization headers, sparing a SHA-256 per request.
    Only valid keys are cached (they are few), so random keys cannot grow it."""

    def __init__(self, aliases: dict[str, str], max_entries: int = 1024):
        self.aliases = aliases
        self.max_entries = max_entries
        self._known: dict[str, str] = {}

    def alias(self, authorization: str | None) -> str | None:
        if authorization is None:
            return None
        alias = self._known.get(authorization)
        if alias is None:
            alias = key_alias(authorization, self.aliases)
            if alias is not None and len(self._known) < self.max_entries:
                self._known[authorization] = alias
        return alias


def redacted_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        headers[key] = REDACTED if key in SENSITIVE_HEADERS else value.decode("latin-1")
    return headers

"""Bearer-key authentication. Keys are compared by SHA-256 so raw keys are never stored in
the lookup table; rows record the key's alias, never the key."""

from llm_gateway.config import hash_key


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>`` (scheme case-insensitive, surrounding space
    ignored), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def key_alias(authorization: str | None, aliases: dict[str, str]) -> str | None:
    """Alias of the presented key, or None when missing/unknown."""
    token = bearer_token(authorization)
    return aliases.get(hash_key(token)) if token is not None else None


class KeyCache:
    """Remembers the alias of valid keys, sparing a SHA-256 per request.

    Keyed on the normalized token, so padded or re-cased variants of one key share an
    entry; only valid keys are cached, and the cache is bounded in entries and bytes, so
    no sequence of requests can grow it past that.
    """

    def __init__(self, aliases: dict[str, str], max_entries: int = 1024, max_bytes: int = 1 << 20):
        self.aliases = aliases
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.cached_bytes = 0
        self._known: dict[str, str] = {}

    def alias(self, authorization: str | None) -> str | None:
        token = bearer_token(authorization)
        if token is None:
            return None
        alias = self._known.get(token)
        if alias is None:
            alias = self.aliases.get(hash_key(token))
            fits = (
                len(self._known) < self.max_entries
                and self.cached_bytes + len(token) <= self.max_bytes
            )
            if alias is not None and fits:
                self._known[token] = alias
                self.cached_bytes += len(token)
        return alias

    def __len__(self) -> int:
        return len(self._known)

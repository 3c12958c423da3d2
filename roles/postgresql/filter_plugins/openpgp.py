"""OpenPGP key fingerprints in plain Python, so no gpg is needed on the host or controller.

``openpgp_fingerprints`` takes an ASCII-armored (or binary) public key block and returns the
fingerprint of every primary key in it, as 40 (v4) or 64 (v5/v6) upper-case hex digits:
the PGDG archive key's is checked against a pinned value before apt is told to trust it.
RFC 4880 section 12.2 (v4: SHA-1 over 0x99, a two-octet length and the key packet's body)
and RFC 9580 section 5.5.4 (v6: SHA-256 over 0x9B and a four-octet length; v5 alike with 0x9A).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

PUBLIC_KEY_TAG = 6


def _dearmor(text: str) -> bytes:
    lines = text.strip().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP"))
        end = next(i for i, line in enumerate(lines) if line.startswith("-----END PGP"))
    except StopIteration as error:
        raise ValueError("not an ASCII-armored OpenPGP block") from error
    body = lines[start + 1 : end]
    # Armor headers ("Version: ...") end at the first empty line, when there are any.
    if "" in body:
        body = body[body.index("") + 1 :]
    data = "".join(line.strip() for line in body if not line.startswith("="))
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as error:
        raise ValueError(f"bad base64 in the OpenPGP armor: {error}") from error


def _packets(data: bytes):
    """Yield (tag, body) of each packet (old and new packet formats)."""
    pos = 0
    while pos < len(data):
        header = data[pos]
        if not header & 0x80:
            raise ValueError(f"not an OpenPGP packet at offset {pos}")
        if header & 0x40:  # new format
            tag = header & 0x3F
            first = data[pos + 1]
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 2 : pos + 6], "big"), pos + 6
            else:
                raise ValueError("partial body lengths do not occur in key packets")
        else:  # old format
            tag = (header >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
            if size is None:
                raise ValueError("indeterminate packet length")
            length = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
            pos += 1 + size
        yield tag, data[pos : pos + length]
        pos += length


def openpgp_fingerprints(key: str | bytes) -> list[str]:
    data = key if isinstance(key, bytes) else _dearmor(key)
    fingerprints = []
    for tag, body in _packets(data):
        if tag != PUBLIC_KEY_TAG:
            continue
        version = body[0]
        if version == 4:
            digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body)
        elif version in (5, 6):
            prefix = b"\x9a" if version == 5 else b"\x9b"
            digest = hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body)
        else:
            raise ValueError(f"OpenPGP key version {version} is not supported")
        fingerprints.append(digest.hexdigest().upper())
    return fingerprints


class FilterModule:
    def filters(self):
        return {"openpgp_fingerprints": openpgp_fingerprints}

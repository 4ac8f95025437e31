"""The payment provider's webhook signature: `X-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`.

v1 is the hex HMAC-SHA256 of "<t>.<raw body>" under the shared secret. Several v1
values may be sent (the provider signs with old and new secrets while rotating), and
several secrets may be configured (comma-separated) while we rotate ours.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

TOLERANCE_SECONDS = 300
_HEX64 = re.compile(r"[0-9a-f]{64}")
# ASCII digits only: str.isdigit() accepts "¹" and other digits int() refuses.
_UNIX_TIME = re.compile(r"[0-9]{1,12}")


class BadSignatureHeader(ValueError):
    """The header is missing or not of the documented form (→ 400)."""


class InvalidSignature(ValueError):
    """Well-formed, but no signature matches or the timestamp is stale (→ 401)."""


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def parse_signature_header(header: str | None) -> SignatureHeader:
    if not header or len(header) > 4096:
        raise BadSignatureHeader("X-Signature header is missing or too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise BadSignatureHeader("X-Signature parts must be key=value")
        if key == "t":
            if timestamp is not None or not _UNIX_TIME.fullmatch(value):
                raise BadSignatureHeader("X-Signature needs one numeric t=")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX64.fullmatch(value):
                raise BadSignatureHeader("v1= must be 64 lowercase hex digits")
            signatures.append(value)
        # Unknown schemes (v0=, future versions) are ignored, as providers advise.
    if timestamp is None or not signatures:
        raise BadSignatureHeader("X-Signature needs t= and at least one v1=")
    return SignatureHeader(timestamp, tuple(signatures))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    header: str | None,
    body: bytes,
    *,
    secrets: list[str],
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    parsed = parse_signature_header(header)
    if abs(now - parsed.timestamp) > tolerance:
        raise InvalidSignature("signature timestamp outside the tolerance")
    expected = [sign(secret, parsed.timestamp, body) for secret in secrets if secret]
    # Compare every pair in constant time; no early exit reveals which one matched.
    matched = False
    for candidate in parsed.signatures:
        for good in expected:
            matched |= hmac.compare_digest(candidate, good)
    if not matched:
        raise InvalidSignature("no signature matches")

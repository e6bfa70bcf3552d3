"""Access tokens: EdDSA (Ed25519) JWTs with a `kid`, verified against a key ring.

Rotation: add the new key to the end of REFERLOOP_JWT_PRIVATE_KEYS and deploy (it is published and
accepted), then move it to the front (it signs), then drop the old one after one token lifetime."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 4096
VERIFIED_CACHE_SIZE = 16_384  # the default of `access_token_cache_size`: about 10 MB per process


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey

    @classmethod
    def from_pem(cls, pem: str | bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem if isinstance(pem, bytes) else pem.encode(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("JWT signing keys must be Ed25519 private keys in PEM")
        public = key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        # RFC 7638 thumbprint: stable, derived from the key, so no one has to invent kids.
        thumbprint = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True
        )
        return cls(kid=_b64url(hashlib.sha256(thumbprint.encode()).digest()), private=key, public=public)

    def jwk(self) -> dict[str, str]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


def generate_private_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_create_dev_key(directory: Path) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "jwt-signing-key.pem"
    if not path.exists():
        path.write_bytes(generate_private_pem())
        path.chmod(0o600)
    return path.read_bytes()


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    mfa: bool
    expires_at: datetime


class TokenSigner:
    def __init__(
        self,
        keys: list[SigningKey],
        issuer: str,
        ttl_seconds: int,
        *,
        verified_cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self.keys = keys
        self._by_kid = {k.kid: k for k in keys}
        self.issuer = issuer
        self.ttl = timedelta(seconds=ttl_seconds)
        # Failures raise, so only valid tokens are cached; the cache belongs to this signer (its keys).
        self._verify_signature = lru_cache(maxsize=verified_cache_size)(self._verify_uncached)

    def verified_cache_info(self) -> Any:
        """Hits, misses and size of the verified-token cache (functools' CacheInfo)."""
        return self._verify_signature.cache_info()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def issue(self, *, user_id: uuid.UUID, session_id: uuid.UUID, role: str, mfa: bool) -> tuple[str, int]:
        now = datetime.now(UTC)
        key = self.keys[0]
        claims = {
            "iss": self.issuer,
            "sub": str(user_id),
            "sid": str(session_id),
            "role": role,
            "amr": ["pwd", "otp"] if mfa else ["pwd"],
            "iat": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
            "jti": secrets.token_urlsafe(12),
        }
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, int(self.ttl.total_seconds())

    def verify(self, token: str) -> AccessClaims:
        """Verify an access token. A token is checked cryptographically once per process (an LRU
        of verified claims): a client sends the same token for its whole 15-minute life, and the
        signature check is the most expensive step of an authenticated request. Expiry is re-checked
        on every call; revocation is checked by the caller (Redis), not here."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        claims = self._verify_signature(token)
        if claims.expires_at <= datetime.now(UTC):
            raise InvalidToken("token expired")
        return claims

    def _verify_uncached(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        # Only our algorithm is ever accepted: `alg: none` and HS256-with-public-key are refused here.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("unexpected algorithm")
        key = self._by_kid.get(str(header.get("kid")))
        if key is None:
            raise InvalidToken("unknown key id")
        try:
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "sid", "iss"]},
            )
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                role=str(claims.get("role", "member")),
                mfa="otp" in claims.get("amr", []),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            )
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidToken(str(exc)) from exc


def new_opaque_token(prefix: str = "rt") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> bytes:
    """Opaque tokens carry 256 bits of entropy, so a plain SHA-256 is the right storage hash."""
    return hashlib.sha256(token.encode()).digest()

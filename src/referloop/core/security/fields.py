"""AES-256-GCM field encryption with a key id on each value, so keys can rotate.

Stored form: ``v1.<kid>.<nonce b64url>.<ciphertext+tag b64url>``. The first configured key encrypts;
any configured key decrypts. `referloop keys rotate` re-encrypts values under the first key."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FieldCipher:
    def __init__(self, keys: dict[str, bytes]) -> None:
        """`keys` maps key id to a 32-byte key; the first entry encrypts."""
        if not keys:
            raise ValueError("at least one field-encryption key is required")
        for kid, key in keys.items():
            if len(key) != 32 or "." in kid:
                raise ValueError(f"field key {kid!r} must be 32 bytes and its id must not contain '.'")
        self.primary_kid = next(iter(keys))
        self._raw = dict(keys)
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}

    @classmethod
    def from_setting(cls, value: str) -> FieldCipher:
        """`kid:base64key,kid2:base64key2` (first encrypts)."""
        keys: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            kid, _, b64 = part.partition(":")
            keys[kid] = _b64d(b64.strip())
        return cls(keys)

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        """`context` (for example the column name) is bound as associated data: a value copied into
        another column does not decrypt."""
        nonce = os.urandom(12)
        ct = self._aead[self.primary_kid].encrypt(nonce, plaintext.encode(), context.encode())
        return f"v1.{self.primary_kid}.{_b64e(nonce)}.{_b64e(ct)}"

    def decrypt(self, stored: str, *, context: str = "") -> str:
        version, kid, nonce, ct = stored.split(".", 3)
        if version != "v1" or kid not in self._aead:
            raise ValueError(f"cannot decrypt a value under key {kid!r}")
        return self._aead[kid].decrypt(_b64d(nonce), _b64d(ct), context.encode()).decode()

    def key_id_of(self, stored: str) -> str:
        return stored.split(".", 2)[1]

    def blind_index(self, value: str, *, context: str) -> bytes:
        """A keyed hash for finding equal values without decrypting them. It is keyed by the primary
        key, so `referloop keys rotate` recomputes it along with the ciphertexts."""
        import hashlib
        import hmac

        key = hmac.new(
            self._raw[self.primary_kid], b"blind-index:" + context.encode(), hashlib.sha256
        ).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).digest()


def load_or_create_dev_field_key(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "field-key.txt"
    if not path.exists():
        path.write_text(f"dev1:{_b64e(os.urandom(32))}")
        path.chmod(0o600)
    return path.read_text().strip()

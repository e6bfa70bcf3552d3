"""AES-256-GCM field encryption with a key id on each value, so keys can rotate.

Stored form: ``v1.<kid>.<nonce b64url>.<ciphertext+tag b64url>``. The first configured key encrypts;
any configured key decrypts. Blind indexes (keyed hashes for equality lookups) are written under the
first key too, and looked up under every configured key (`blind_indexes`), so rows indexed under an
older key still match while a rotation is under way.

Rotating: put the new key first (keep the old ones after it), run `referloop keys rotate` until it
reports nothing left under another key, then remove the old key."""

from __future__ import annotations

import base64
import hashlib
import hmac
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

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every configured key id, the primary (encrypting) one first."""
        return tuple(self._raw)

    def key_id_of(self, stored: str) -> str:
        return stored.split(".", 2)[1]

    def is_primary(self, stored: str) -> bool:
        """Whether `stored` is encrypted under the primary key (nothing for rotation to do)."""
        return stored.startswith(f"v1.{self.primary_kid}.")

    def blind_index(self, value: str, *, context: str) -> bytes:
        """A keyed hash for finding equal values without decrypting them, keyed by the primary key:
        what new rows store. Look rows up with `blind_indexes` (rows written before a key rotation
        hold the index under an older key until `referloop keys rotate` recomputes it)."""
        return self.blind_index_under(self.primary_kid, value, context=context)

    def blind_indexes(self, value: str, *, context: str) -> list[bytes]:
        """The index of `value` under every configured key, the primary one first: match a stored
        index against all of them (SQL `IN`)."""
        return [self.blind_index_under(kid, value, context=context) for kid in self._raw]

    def blind_index_under(self, kid: str, value: str, *, context: str) -> bytes:
        key = hmac.new(self._raw[kid], b"blind-index:" + context.encode(), hashlib.sha256).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).digest()

    def index_key_of(self, stored: bytes, value: str, *, context: str) -> str | None:
        """The id of the configured key `stored` is the index of `value` under, if any."""
        for kid in self._raw:
            if hmac.compare_digest(bytes(stored), self.blind_index_under(kid, value, context=context)):
                return kid
        return None


def load_or_create_dev_field_key(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "field-key.txt"
    if not path.exists():
        path.write_text(f"dev1:{_b64e(os.urandom(32))}")
        path.chmod(0o600)
    return path.read_text().strip()

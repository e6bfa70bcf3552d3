"""Member referral codes: 8 characters of Crockford base32 (40 random bits), case-insensitive."""

import secrets

CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8
_DECODE_ALIASES = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_referral_code() -> str:
    return "".join(secrets.choice(CROCKFORD_ALPHABET) for _ in range(CODE_LENGTH))


def normalize_referral_code(code: str) -> str:
    """Crockford decoding: case-insensitive, I and L read as 1, O as 0, hyphens ignored."""
    return code.upper().replace("-", "").translate(_DECODE_ALIASES)

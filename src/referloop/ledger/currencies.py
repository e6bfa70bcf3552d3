"""ISO 4217 currencies and their minor-unit exponents.

The data comes from the `iso4217` package, which ships the ISO 4217 maintenance agency's own table
(list one, dated in the package version) rather than a hand-copied list: exponents do change (ISK,
UGX, VND...), and a wrong exponent misprices every amount by a power of ten. Codes without a minor
unit in that table (gold, SDRs, test codes: "N.A.") are not money here and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from iso4217 import Currency as _IsoCurrency

from referloop.ledger.errors import UnknownCurrency

# The largest amount one posting may carry, in minor units: far beyond any real payout, and small
# enough that sums over millions of postings stay inside a bigint.
MAX_AMOUNT = 10**15


@dataclass(frozen=True, slots=True)
class CurrencyInfo:
    code: str
    exponent: int
    name: str
    number: int

    def major_text(self, amount: int) -> str:
        """Minor units as a plain decimal in major units, for display and exports: 1500 INR is
        "15.00", 1500 JPY "1500", 1500 KWD "1.500"."""
        return f"{Decimal(amount).scaleb(-self.exponent):.{self.exponent}f}"

    def format(self, amount: int) -> str:
        return f"{self.major_text(amount)} {self.code}"


@cache
def _table() -> dict[str, CurrencyInfo]:
    return {
        c.code: CurrencyInfo(code=c.code, exponent=c.exponent, name=c.currency_name, number=c.number)
        for c in _IsoCurrency
        if c.exponent is not None
    }


def get_currency(code: str) -> CurrencyInfo:
    """The currency for an ISO 4217 alphabetic code; UnknownCurrency if it is not one we can hold."""
    info = _table().get(code) if isinstance(code, str) else None
    if info is None:
        raise UnknownCurrency(f"{code!r} is not an ISO 4217 currency with minor units.")
    return info


def is_currency(code: str) -> bool:
    return code in _table()


def all_currencies() -> list[CurrencyInfo]:
    return sorted(_table().values(), key=lambda c: c.code)

"""Outcome files: a CSV with a header row, read into the same items as a JSON batch; and the report
(which rows were accepted, which refused and why) as CSV.

Columns (header names, any order): external_id, type, occurred_at (required); referral_id, click_id,
email, phone, program_id, fee_amount, fee_currency (optional; an empty cell is no value). The file is
UTF-8 (a BOM is accepted), comma-separated, quoted as RFC 4180 says."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from referloop.referrals.partner.errors import CsvRefused
from referloop.referrals.partner.schemas import OutcomeBatchResult
from referloop.referrals.partner.service.outcomes import InvalidRow

REQUIRED_COLUMNS = ("external_id", "type", "occurred_at")
OPTIONAL_COLUMNS = (
    "referral_id",
    "click_id",
    "email",
    "phone",
    "program_id",
    "fee_amount",
    "fee_currency",
)
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
REPORT_COLUMNS = ("row", "external_id", "status", "referral_id", "state", "reason")
_DIGITS = re.compile(r"^[0-9]{1,16}$")


def parse_outcomes_csv(data: bytes, max_rows: int) -> tuple[list[dict[str, Any] | InvalidRow], list[int]]:
    """(items, the file line of each). Whole-file problems (not UTF-8, no header, unknown or missing
    columns, too many rows) answer 422; a bad row becomes an item that fails validation on its own."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvRefused("The file is not UTF-8 text.") from exc
    if "\x00" in text:
        raise CsvRefused("The file contains NUL characters.")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise CsvRefused("The file is empty; the first line must name the columns.")
        names = [h.strip().lower() for h in header]
        unknown = [n for n in names if n not in COLUMNS]
        if unknown:
            raise CsvRefused(f"Unknown column(s): {', '.join(unknown[:5])}. Known: {', '.join(COLUMNS)}.")
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise CsvRefused(f"Missing column(s): {', '.join(missing)}.")
        if len(set(names)) != len(names):
            raise CsvRefused("A column is named twice.")
        items: list[dict[str, Any] | InvalidRow] = []
        lines: list[int] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank lines (a trailing newline, a spacer row) are not rows
            if len(items) >= max_rows:
                raise CsvRefused(f"The file has more than {max_rows} rows; split it.")
            lines.append(reader.line_num)
            items.append(_item(names, cells))
    except csv.Error as exc:
        raise CsvRefused(f"The file is not valid CSV (line {reader.line_num}): {exc}") from exc
    if not items:
        raise CsvRefused("The file has a header but no rows.")
    return items, lines


def _item(names: list[str], cells: list[str]) -> dict[str, Any] | InvalidRow:
    if len(cells) != len(names):
        # Passed on as an item of its own, so the report names the row and the reason.
        return InvalidRow(f"The row has {len(cells)} cells; the header has {len(names)}.")
    values = {n: c.strip() for n, c in zip(names, cells, strict=True) if c.strip()}
    item: dict[str, Any] = {k: v for k, v in values.items() if k not in ("fee_amount", "fee_currency")}
    if "fee_amount" in values or "fee_currency" in values:
        amount: Any = values.get("fee_amount")
        item["fee"] = {
            "amount": int(amount) if isinstance(amount, str) and _DIGITS.match(amount) else amount,
            "currency": values.get("fee_currency"),
        }
    return item


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet would run a cell that starts with one of these as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def report_csv(result: OutcomeBatchResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    for item in result.items:
        reason = item.reason or ""
        if item.errors:
            reason = "; ".join(f"{e.field or 'item'}: {e.message}" for e in item.errors)
        writer.writerow(
            [
                item.row,
                _cell(item.external_id),
                item.status,
                item.referral_id or "",
                item.state or "",
                _cell(reason),
            ]
        )
    return out.getvalue()

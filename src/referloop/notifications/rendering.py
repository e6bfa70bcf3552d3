"""Message templates: `templates/<channel>/<locale>/<template>.<part>.j2`, Jinja2.

A locale falls back to its language, then to `en` (`hi-IN` → `hi` → `en`); all parts of one message
come from the same locale. HTML parts are autoescaped; text parts and subjects are not (they are not
HTML), and a subject is folded onto one line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

TEMPLATES_DIR = Path(__file__).parent / "templates"
DEFAULT_LOCALE = "en"

_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,3}$")


class UnknownTemplateError(LookupError):
    pass


@dataclass(frozen=True)
class RenderedEmail:
    locale: str
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False, default=False
        ),
        undefined=StrictUndefined,  # a missing context value fails loudly instead of sending a blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )


def locale_candidates(locale: str) -> list[str]:
    """`pt_BR` → [`pt-br`, `pt`, `en`]. Template folders are lowercase language tags."""
    candidates: list[str] = []
    if _LOCALE.match(locale):
        tag = locale.replace("_", "-").lower()
        parts = tag.split("-")
        candidates += ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    candidates.append(DEFAULT_LOCALE)
    return list(dict.fromkeys(candidates))


def _resolve(channel: str, template: str, locale: str, first_part: str) -> str:
    if not _TEMPLATE_NAME.match(template):
        raise UnknownTemplateError(f"bad template name {template!r}")
    env = _environment()
    for candidate in locale_candidates(locale):
        try:
            env.get_template(f"{channel}/{candidate}/{template}.{first_part}.j2")
        except TemplateNotFound:
            continue
        return candidate
    raise UnknownTemplateError(f"no {channel} template {template!r} for {locale!r} or {DEFAULT_LOCALE!r}")


def _render(name: str, context: dict[str, Any]) -> str:
    return _environment().get_template(name).render(context).strip()


def render_email(template: str, locale: str, context: dict[str, Any]) -> RenderedEmail:
    found = _resolve("email", template, locale, "subject")
    values = {**context, "locale": found}
    base = f"email/{found}/{template}"
    return RenderedEmail(
        locale=found,
        subject=" ".join(_render(f"{base}.subject.j2", values).split()),
        text=_render(f"{base}.txt.j2", values) + "\n",
        html=_render(f"{base}.html.j2", values) + "\n",
    )


def render_sms(template: str, locale: str, context: dict[str, Any]) -> tuple[str, str]:
    """(locale used, body)."""
    found = _resolve("sms", template, locale, "txt")
    return found, _render(f"sms/{found}/{template}.txt.j2", {**context, "locale": found})

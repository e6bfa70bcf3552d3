"""SMS until a real provider lands (notifications issue): a sink that writes each message as
`{var_dir}/sms/<event id>.json` and logs it."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import orjson
import structlog

log = structlog.get_logger(__name__)


class FileSmsSink:
    def __init__(self, directory: Path, *, log_body: bool) -> None:
        self.directory = directory
        self.log_body = log_body  # codes in logs are fine on a laptop, not in production

    def _write(self, event_id: uuid.UUID, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{event_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    async def send(self, event_id: uuid.UUID, *, to: str, body: str, locale: str, template: str) -> Path:
        record = {"id": str(event_id), "to": to, "body": body, "locale": locale, "template": template}
        path = await asyncio.to_thread(self._write, event_id, orjson.dumps(record))
        log.info(
            "sms written",
            path=str(path),
            to=to,
            template=template,
            **({"body": body} if self.log_body else {}),
        )
        return path

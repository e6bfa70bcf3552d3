"""UUIDv7 ids: time-ordered, so B-tree inserts stay append-only and cursors sort by creation."""

import uuid

import uuid_utils


def uuid7() -> uuid.UUID:
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)

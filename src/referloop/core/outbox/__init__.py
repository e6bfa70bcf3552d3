"""Transactional outbox: events are rows written in the request's transaction, published after commit."""

from referloop.core.outbox.service import enqueue

__all__ = ["enqueue"]

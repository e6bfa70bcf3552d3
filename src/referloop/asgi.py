"""ASGI entry point for uvicorn workers: `referloop.asgi:app`."""

from referloop.app import create_app

app = create_app()

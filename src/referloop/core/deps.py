"""FastAPI dependencies every domain shares: the runtime, the two session types, the request context."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request

from referloop.core.context import RequestContext
from referloop.core.db import AsyncReadSession, AsyncWriteSession
from referloop.core.errors import AppError
from referloop.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


async def get_runtime(request: Request) -> Runtime:
    # async: a plain `def` dependency would run in a worker thread on every request.
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def _write_session(request: Request) -> AsyncIterator[AsyncWriteSession]:
    runtime = runtime_of(request)
    async with runtime.db.sessionmaker() as session:
        try:
            yield AsyncWriteSession(session)
        except AppError as exc:
            if exc.keep_changes:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


async def _read_session(request: Request) -> AsyncIterator[AsyncReadSession]:
    runtime = runtime_of(request)
    async with runtime.db.read_sessionmaker() as session:
        yield AsyncReadSession(session)


# scope="function": the transaction ends before the response is sent, so a client never sees
# success for a commit that then failed.
WriteSession = Annotated[AsyncWriteSession, Depends(_write_session, scope="function")]
ReadSession = Annotated[AsyncReadSession, Depends(_read_session, scope="function")]


def client_ip(request: Request, trusted_proxies: int) -> str | None:
    """The client's address: the one our trusted proxies saw, or the socket peer. A forwarded value
    that is not an IP address is ignored (it would otherwise key rate limits and audit rows)."""
    if trusted_proxies > 0:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            hops = [h.strip() for h in forwarded.split(",") if h.strip()]
            if len(hops) >= trusted_proxies:
                try:
                    return str(ipaddress.ip_address(hops[-trusted_proxies]))
                except ValueError:
                    pass
    return request.client.host if request.client else None


def rate_limit_ip(ip: str | None) -> str:
    """The client part of a per-IP rate limit key: an IPv4 address as it is, an IPv6 address by its
    /64 network. One subscriber or host is routinely given a whole /64, so its 2^64 addresses are
    one client. (Audit rows and sessions keep the full address.)"""
    if not ip:
        return "-"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is that IPv4 client
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def get_request_context(request: Request, runtime: RuntimeDep) -> RequestContext:
    return RequestContext(
        request_id=getattr(request.state, "request_id", None),
        ip=client_ip(request, runtime.settings.trusted_proxy_count),
        user_agent=request.headers.get("user-agent"),
    )


ContextDep = Annotated[RequestContext, Depends(get_request_context)]

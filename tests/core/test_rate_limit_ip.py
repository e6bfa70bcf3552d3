"""Per-IP rate limits count an IPv6 client by its /64 network: one host given a /64 cannot rotate
through its 2^64 addresses to escape a limit. IPv4 addresses are counted one by one, as before."""

from __future__ import annotations

import random
import uuid

import pytest

from referloop.core.deps import rate_limit_ip
from referloop.core.errors import TooManyRequests
from referloop.runtime import Runtime


def _prefix() -> str:
    """A /64 of this test's own (documentation range), so earlier runs' counters never apply."""
    return f"2001:db8:{random.randint(0, 0xFFFF):x}:{random.randint(0, 0xFFFF):x}"


def test_an_ipv6_client_is_keyed_by_its_64_network() -> None:
    assert rate_limit_ip("2001:db8:1:2:aaaa::1") == rate_limit_ip("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert rate_limit_ip("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert rate_limit_ip("2001:db8:1:3::1") != rate_limit_ip("2001:db8:1:2::1")
    assert rate_limit_ip("2001:DB8:1:2:0::7") == "2001:db8:1:2::/64"  # any spelling of the address


def test_ipv4_is_unchanged() -> None:
    assert rate_limit_ip("203.0.113.7") == "203.0.113.7"
    assert rate_limit_ip("203.0.113.8") != rate_limit_ip("203.0.113.7")
    assert rate_limit_ip("::ffff:203.0.113.7") == "203.0.113.7"  # an IPv4 client on a dual stack
    assert rate_limit_ip(None) == "-"


async def test_two_addresses_in_one_64_share_a_limit(runtime: Runtime) -> None:
    if not runtime.limiter.enabled:
        pytest.skip("rate limits are off in this run")
    name = f"test-ip-{uuid.uuid4().hex[:8]}"
    prefix = _prefix()
    await runtime.limiter.hit("2/minute", name, rate_limit_ip(f"{prefix}::1"))
    await runtime.limiter.hit("2/minute", name, rate_limit_ip(f"{prefix}:1234:5678:9abc:def0"))
    with pytest.raises(TooManyRequests):
        await runtime.limiter.hit("2/minute", name, rate_limit_ip(f"{prefix}:ffff::42"))
    # Another /64 has a limit of its own.
    await runtime.limiter.hit("2/minute", name, rate_limit_ip(f"{_prefix()}::1"))

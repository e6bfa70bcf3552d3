"""Access tokens: EdDSA JWTs with a kid; every malformed, forged or expired one gets 401 problem+json."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from pydantic import SecretStr

from referloop.core.security.tokens import SigningKey, generate_private_pem
from referloop.runtime import Runtime
from tests.factories import Member, asgi_client, register_member


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def header_of(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def hand_made(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}".encode()
    return f"{signing_input.decode()}.{b64(sign(signing_input))}"


def pem_of(key: SigningKey) -> str:
    return key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
async def member(client: httpx.AsyncClient) -> Member:
    return await register_member(client)


async def assert_refused(client: httpx.AsyncClient, token: str) -> None:
    r = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_token"
    assert r.headers["www-authenticate"] == "Bearer"


class TestRefused:
    async def test_a_real_token_is_accepted(self, client: httpx.AsyncClient, member: Member) -> None:
        r = await client.get("/v1/me", headers=member.auth)
        assert r.status_code == 200
        header, claims = header_of(member.access_token), claims_of(member.access_token)
        assert header["alg"] == "EdDSA"
        assert header["kid"]
        assert claims["exp"] - claims["iat"] == 15 * 60
        assert claims["sub"] == member.id

    async def test_expired(self, client: httpx.AsyncClient, runtime: Runtime, member: Member) -> None:
        key = runtime.signer.keys[0]
        claims = {
            **claims_of(member.access_token),
            "iat": int(time.time()) - 1000,
            "exp": int(time.time()) - 5,
        }
        token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})
        await assert_refused(client, token)

    async def test_forged_with_another_key_under_our_kid(
        self, client: httpx.AsyncClient, runtime: Runtime, member: Member
    ) -> None:
        claims = {**claims_of(member.access_token), "role": "admin"}
        token = jwt.encode(
            claims,
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": runtime.signer.keys[0].kid},
        )
        await assert_refused(client, token)

    async def test_changed_payload(self, client: httpx.AsyncClient, member: Member) -> None:
        head, _, sig = member.access_token.split(".")
        payload = b64(json.dumps({**claims_of(member.access_token), "role": "admin"}).encode())
        await assert_refused(client, f"{head}.{payload}.{sig}")

    async def test_wrong_kid(self, client: httpx.AsyncClient, runtime: Runtime, member: Member) -> None:
        key = runtime.signer.keys[0]
        for kid in ("not-a-key-we-have", None):
            headers = {"kid": kid} if kid else {}
            token = jwt.encode(
                claims_of(member.access_token), key.private, algorithm="EdDSA", headers=headers
            )
            await assert_refused(client, token)

    async def test_alg_none(self, client: httpx.AsyncClient, runtime: Runtime, member: Member) -> None:
        kid = runtime.signer.keys[0].kid
        for alg in ("none", "None", "NONE"):
            token = hand_made(
                {"alg": alg, "typ": "JWT", "kid": kid}, claims_of(member.access_token), lambda _: b""
            )
            await assert_refused(client, token)
            await assert_refused(client, token.rstrip("."))

    async def test_hs256_signed_with_the_public_key(
        self, client: httpx.AsyncClient, runtime: Runtime, member: Member
    ) -> None:
        key = runtime.signer.keys[0]
        jwk_x = base64.urlsafe_b64decode(key.jwk()["x"] + "==")
        public_pem = key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for secret in (public_pem, jwk_x, key.jwk()["x"].encode()):
            token = hand_made(
                {"alg": "HS256", "typ": "JWT", "kid": key.kid},
                claims_of(member.access_token),
                lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest(),
            )
            await assert_refused(client, token)

    async def test_wrong_issuer_or_missing_claims(
        self, client: httpx.AsyncClient, runtime: Runtime, member: Member
    ) -> None:
        key = runtime.signer.keys[0]
        good = claims_of(member.access_token)
        for claims in (
            {**good, "iss": "someone-else"},
            {k: v for k, v in good.items() if k != "sid"},
            {k: v for k, v in good.items() if k != "exp"},
            {**good, "sub": "not-a-uuid"},
        ):
            token = jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})
            await assert_refused(client, token)

    @pytest.mark.parametrize(
        "header",
        [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer not.a.jwt",
            "Bearer a.b",
            "Token abc",
        ],
    )
    async def test_missing_or_malformed_header(self, client: httpx.AsyncClient, header: str) -> None:
        r = await client.get("/v1/me", headers={"Authorization": header} if header else {})
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"


class TestJwks:
    async def test_jwks_verifies_a_real_token(self, client: httpx.AsyncClient, member: Member) -> None:
        r = await client.get("/.well-known/jwks.json")
        assert r.status_code == 200
        jwks = jwt.PyJWKSet.from_dict(r.json())
        kid = header_of(member.access_token)["kid"]
        key = next(k for k in jwks.keys if k.key_id == kid)
        claims = jwt.decode(member.access_token, key.key, algorithms=["EdDSA"], issuer="referloop")
        assert claims["sub"] == member.id
        # Only public material is published.
        assert all(set(k) == {"kty", "crv", "x", "kid", "use", "alg"} for k in r.json()["keys"])

    async def test_rotation_keeps_everyone_signed_in(
        self, client: httpx.AsyncClient, runtime: Runtime, app_factory: Callable[..., FastAPI], member: Member
    ) -> None:
        old = runtime.signer.keys[0]
        new_pem = generate_private_pem().decode()
        new_kid = SigningKey.from_pem(new_pem).kid
        # Step 1: the new key is published and accepted, the old one still signs.
        staged = app_factory(jwt_private_keys=[SecretStr(pem_of(old)), SecretStr(new_pem)])
        # Step 2: the new key signs; the old one is still accepted until its tokens expire.
        rotated = app_factory(jwt_private_keys=[SecretStr(new_pem), SecretStr(pem_of(old))])

        async with asgi_client(staged) as c:
            kids = [k["kid"] for k in (await c.get("/.well-known/jwks.json")).json()["keys"]]
            assert kids == [old.kid, new_kid]
            login = await c.post("/v1/auth/login", json={"login": member.email, "password": member.password})
            assert header_of(login.json()["access_token"])["kid"] == old.kid

        async with asgi_client(rotated) as c:
            # A token signed by the old key before the rotation still works.
            assert (await c.get("/v1/me", headers=member.auth)).status_code == 200
            # Refreshing gives a token under the new key, which verifies against the published JWKS.
            pair = (await c.post("/v1/auth/refresh", json={"refresh_token": member.refresh_token})).json()
            assert header_of(pair["access_token"])["kid"] == new_kid
            assert (
                await c.get("/v1/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
            ).status_code == 200
            client_side = jwt.PyJWKSet.from_dict((await c.get("/.well-known/jwks.json")).json())
            assert (
                jwt.decode(
                    pair["access_token"], client_side[new_kid].key, algorithms=["EdDSA"], issuer="referloop"
                )["sub"]
                == member.id
            )

        # A server that never heard of the new key refuses its tokens.
        await assert_refused(client, pair["access_token"])


class TestVerifiedTokenCache:
    @pytest.mark.parametrize(("size", "second_round_hits"), [(8, 3), (2, 0), (0, 0)])
    async def test_the_cache_holds_at_most_its_setting_and_every_token_still_works(
        self,
        client: httpx.AsyncClient,
        app_factory: Callable[..., FastAPI],
        size: int,
        second_round_hits: int,
    ) -> None:
        members = [await register_member(client) for _ in range(3)]
        app = app_factory(access_token_cache_size=size)
        signer = app.state.runtime.signer
        async with asgi_client(app) as c:
            for _ in range(2):
                for m in members:
                    r = await c.get("/v1/me", headers=m.auth)
                    assert r.status_code == 200 and r.json()["id"] == m.id
        info = signer.verified_cache_info()
        assert info.maxsize == size and info.currsize == min(size, 3)
        # Three tokens cycling through a cache of two never hit: each check is a signature check.
        assert (info.hits, info.misses) == (second_round_hits, 6 - second_round_hits)

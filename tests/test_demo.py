from referloop.demo import DEMO_MEMBERS, DEMO_PASSWORD, seed_demo
from referloop.runtime import Runtime


async def test_seed_demo_makes_accounts_that_sign_in_and_runs_twice_safely(runtime: Runtime, client):
    first = await seed_demo(runtime)
    second = await seed_demo(runtime)
    assert not [line for line in second if line.startswith("created")]
    assert len(first) >= len(second)

    email = DEMO_MEMBERS[0][0]
    r = await client.post("/v1/auth/login", json={"login": email, "password": DEMO_PASSWORD})
    assert r.status_code == 200, r.text
    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["display_name"] == DEMO_MEMBERS[0][2]

"""One owner's runs cannot take every worker: THREADKEEPER_MAX_RUNS_PER_OWNER."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.fixtures import app_client
from threadkeeper.service.app import create_app
from threadkeeper.service.settings import Settings

SLOW = "look up slowly 3"


def turn(text: str) -> dict[str, object]:
    return {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}


def as_user(name: str) -> dict[str, str]:
    return {"X-Forwarded-User": name}


async def _thread(client: httpx.AsyncClient, user: str) -> str:
    r = await client.post("/threads", json={}, headers=as_user(user))
    thread_id: str = r.json()["thread_id"]
    return thread_id


async def test_one_owners_slow_runs_do_not_delay_anothers_turn(
    settings_for: Callable[..., Settings],
) -> None:
    """4 workers, so by default an owner runs at most 2 at once: alice's 4 slow runs leave
    room for bob's turn, which ends while alice's first two still run and the others wait."""
    settings = settings_for(auth="header", workers=4)
    assert settings.owner_cap == 2
    async with app_client(create_app(settings, run_migrations=False)) as client:
        alice = []
        for i in range(4):
            tid = await _thread(client, "alice")
            r = await client.post(
                f"/threads/{tid}/runs", json=turn(f"{SLOW} {i}"), headers=as_user("alice")
            )
            assert r.status_code == 200, r.text
            alice.append((tid, r.json()["run_id"]))
        tid = await _thread(client, "bob")
        r = await client.post(f"/threads/{tid}/runs/wait", json=turn("hi"), headers=as_user("bob"))
        assert r.status_code == 200, r.text
        assert "Turn 1." in r.json()["messages"][-1]["content"]
        statuses = [
            (await client.get(f"/threads/{t}/runs/{run}", headers=as_user("alice"))).json()[
                "status"
            ]
            for t, run in alice
        ]
        assert sorted(statuses) == ["pending", "pending", "running", "running"]
        for t, run in alice:
            joined = await client.get(
                f"/threads/{t}/runs/{run}/join", headers=as_user("alice"), timeout=60
            )
            assert "looked up slowly" in joined.text


def test_the_cap_defaults_to_half_the_workers_when_owners_are_told_apart() -> None:
    assert Settings(auth="header", workers=10).owner_cap == 5
    assert Settings(auth="header", workers=1).owner_cap == 1
    assert Settings(auth="none", workers=10).owner_cap == 0
    assert Settings(auth="none", workers=10, max_runs_per_owner=3).owner_cap == 3
    assert Settings(auth="header", workers=10, max_runs_per_owner=0).owner_cap == 0

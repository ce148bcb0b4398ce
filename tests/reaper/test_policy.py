"""The RetentionPolicy model, its durations, and the CRD it must agree with."""

from __future__ import annotations

import ast
import re
import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tests.reaper.support import policy_document
from threadkeeper.reaper.durations import (
    DURATION_PATTERN,
    MAX_COUNT,
    MAX_DURATION,
    DurationError,
    format_duration,
    parse_duration,
)
from threadkeeper.reaper.ids import cutoff_id, id_time
from threadkeeper.reaper.policy import (
    PLURAL,
    PolicyError,
    RetentionPolicy,
    RetentionPolicySpec,
    load_policy,
    parse_policy,
)

CRD_PATH = Path(__file__).parents[2] / "deploy" / "crds" / "retentionpolicies.threadkeeper.dev.yaml"

EXAMPLE = """
apiVersion: threadkeeper.dev/v1alpha1
kind: RetentionPolicy
metadata: {name: default, namespace: agents}
spec:
  database: {secretRef: {name: threadkeeper-db, key: url}}
  schedule: {interval: 10m}
  threads: {maxIdle: 30d, archivedFor: 7d}
  checkpoints: {keepLast: 20, maxAge: 7d}
  orphans: {olderThan: 30d}
  limits: {batchSize: 500, maxDuration: 5m, lockTimeout: 2s, statementTimeout: 30s}
  dryRun: false
  suspend: false
"""


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def _spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("1w", timedelta(weeks=1)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == text


@pytest.mark.parametrize("text", ["", "0d", "07d", "1.5h", "1h30m", "10", "d", "3y", " 1d", "1D"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError, match="not a duration"):
        parse_duration(text)


# Nine digits of seconds (the pattern's limit) stay below 100 years; every other unit reaches it.
@pytest.mark.parametrize("unit", [u for u in sorted(MAX_COUNT) if MAX_COUNT[u] < 10**9])
def test_durations_are_at_most_100_years(unit: str) -> None:
    longest = parse_duration(f"{MAX_COUNT[unit]}{unit}")
    assert longest <= MAX_DURATION == timedelta(days=36525)
    with pytest.raises(DurationError, match="at most 100 years"):
        parse_duration(f"{MAX_COUNT[unit] + 1}{unit}")


@pytest.mark.parametrize(
    "rules",
    [
        {"checkpoints": {"keepLast": 2, "maxAge": "99999w"}},
        {"orphans": {"olderThan": "99999w"}},
        {"threads": {"maxIdle": "999999d"}},
        {"threads": {"maxIdle": "999999999w"}},
        {"threads": {"archivedFor": "5218w"}},
        {"checkpoints": {}, "schedule": {"interval": "999999999m"}},
        {"checkpoints": {}, "limits": {"maxDuration": "36526d"}},
    ],
)
def test_the_parser_refuses_durations_beyond_100_years(rules: dict[str, Any]) -> None:
    with pytest.raises(PolicyError, match="at most 100 years"):
        parse_policy(policy_document(**rules))


def test_cutoff_ids_saturate_instead_of_wrapping() -> None:
    oldest = cutoff_id(datetime(1, 1, 1, tzinfo=UTC))
    assert oldest == cutoff_id(datetime(1582, 10, 15, tzinfo=UTC))
    assert oldest == "00000000-0000-6000-8000-000000000000"
    # Every real id sorts at or above it, so "older than the cutoff" selects nothing.
    assert oldest <= cutoff_id(datetime(1582, 10, 15, 0, 0, 1, tzinfo=UTC))
    newest = cutoff_id(datetime(9999, 12, 31, tzinfo=UTC))
    assert newest > cutoff_id(datetime(5000, 1, 1, tzinfo=UTC))


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)))
def test_cutoff_ids_order_like_time(moment: datetime) -> None:
    moment = moment.replace(tzinfo=UTC)
    later = moment + timedelta(microseconds=1)
    assert cutoff_id(moment) < cutoff_id(later)
    assert id_time(cutoff_id(moment)) == moment


def test_the_documented_example_parses() -> None:
    policy = parse_policy(yaml.safe_load(EXAMPLE))
    assert policy.spec.checkpoints is not None
    assert policy.spec.checkpoints.keep_last == 20
    assert policy.spec.threads is not None
    assert policy.spec.threads.max_idle_delta == timedelta(days=30)
    assert policy.spec.limits.lock_timeout_delta == timedelta(seconds=2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec: set at least one of threads, checkpoints, orphans"),
        ({"threads": {}}, "spec.threads: set maxIdle, archivedFor or both"),
        ({"store": {"sweepExpired": False}}, "spec.store: set sweepExpired: true, maxItems"),
        ({"store": {}}, "spec.store: set sweepExpired: true, maxItemsPerNamespace or maxIdle"),
        ({"store": {"maxIdle": "1 day"}}, "spec.store.maxIdle: '1 day' is not a duration"),
        ({"store": {"maxItemsPerNamespace": 0}}, "spec.store.maxItemsPerNamespace: Input should"),
        ({"store": {"sweepExpired": True, "maxAge": "1d"}}, "spec.store.maxAge: Extra inputs"),
        ({"checkpoints": {"keepLast": 0}}, "spec.checkpoints.keepLast: Input should be greater"),
        ({"threads": {"maxIdle": "30 days"}}, "spec.threads.maxIdle: '30 days' is not a duration"),
        ({"orphans": {}}, "spec.orphans.olderThan: Field required"),
        ({"checkpoints": {"keeplast": 3}}, "spec.checkpoints.keeplast: Extra inputs"),
        ({"checkpoints": {"keepLast": 5, "maxAgee": "30d"}}, "spec.checkpoints.maxAgee: Extra"),
        ({"threads": {"maxIdle": "1d", "archivedfor": "1d"}}, "spec.threads.archivedfor: Extra"),
        ({"orphans": {"olderThan": "1d", "x": 1}}, "spec.orphans.x: Extra"),
        ({"checkpoints": {}, "limits": {"batchsize": 5}}, "spec.limits.batchsize: Extra"),
        ({"checkpoints": {}, "schedule": {"every": "1d"}}, "spec.schedule.every: Extra"),
        ({"checkpoints": {}, "dryrun": True}, "spec.dryrun: Extra"),
        ({"checkpoints": {}, "limits": {"batchSize": 0}}, "spec.limits.batchSize"),
    ],
)
def test_invalid_policies_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match="invalid RetentionPolicy") as err:
        parse_policy(policy_document(**spec))
    assert message in str(err.value)


def test_wrong_kind_and_missing_database_are_reported() -> None:
    doc = policy_document(checkpoints={})
    doc["kind"] = "Policy"
    del doc["spec"]["database"]
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert "kind:" in str(err.value)
    assert "spec.database: Field required" in str(err.value)


def test_policy_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(EXAMPLE)
    assert load_policy(good).metadata.name == "default"
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)
    two = tmp_path / "two.yaml"
    two.write_text(EXAMPLE + "\n---\n" + EXAMPLE)
    with pytest.raises(PolicyError, match="exactly one RetentionPolicy, found 2"):
        load_policy(two)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text")
    with pytest.raises(PolicyError, match="must be a YAML mapping"):
        load_policy(scalar)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (model := _model_of(arg)) is not None:
                return model
    return None


def _is_duration(field: FieldInfo) -> bool:
    # reaper.policy.Duration: its validator sits in the annotation (optional fields) or in the
    # field's metadata (required ones).
    return "_check_duration" in repr(field.annotation) + repr(field.metadata)


def _compare(model: type[BaseModel], schema: dict[str, Any], path: str) -> None:
    properties: dict[str, Any] = schema["properties"]
    aliases = {field.alias or name: field for name, field in model.model_fields.items()}
    assert set(aliases) == set(properties), path
    for alias, field in aliases.items():
        prop = properties[alias]
        where = f"{path}.{alias}"
        nested = _model_of(field.annotation)
        if field.default is PydanticUndefined and field.default_factory is None:
            assert alias in schema.get("required", []), f"{where} is required in pydantic only"
        elif isinstance(field.default, BaseModel):
            # An object defaulted to {} so that the API server fills in its members.
            assert prop.get("default") == {}, where
        elif field.default is None:
            assert "default" not in prop, where
        else:
            assert prop.get("default") == field.default, where
        if alias in schema.get("required", []):
            assert field.default is PydanticUndefined, f"{where} is required in the CRD only"
        if nested is not None:
            _compare(nested, prop, where)
        elif _is_duration(field):
            assert prop["pattern"] == DURATION_PATTERN, where


def test_crd_defaults_and_required_fields_match_the_model() -> None:
    _compare(RetentionPolicySpec, _spec_schema()["properties"]["spec"], "spec")


def _closed_rule(properties: dict[str, Any]) -> str:
    return "dyn(self).size() == " + " + ".join(f"(has(self.{k}) ? 1 : 0)" for k in properties)


def _objects_and_durations(
    model: type[BaseModel], schema: dict[str, Any], path: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    yield "object", path, schema
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = schema["properties"][alias]
        nested = _model_of(field.annotation)
        if nested is not None:
            yield from _objects_and_durations(nested, prop, f"{path}.{alias}")
        elif _is_duration(field):
            yield "duration", f"{path}.{alias}", prop


def _crd_parts(wanted: str) -> list[tuple[str, dict[str, Any]]]:
    """The spec's objects or durations, each with its path and CRD schema."""
    spec = _spec_schema()["properties"]["spec"]
    parts = _objects_and_durations(RetentionPolicySpec, spec, "spec")
    return [(path, schema) for kind, path, schema in parts if kind == wanted]


def test_the_crd_keeps_unknown_fields_to_refuse_them() -> None:
    """Pruning would silently drop a typo; kept, the CEL rule of its object refuses it."""
    objects = _crd_parts("object")
    assert len(objects) == 9
    for path, schema in objects:
        assert schema.get("x-kubernetes-preserve-unknown-fields") is True, path
        rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
        assert _closed_rule(schema["properties"]) in rules, path


def test_every_crd_duration_is_bounded_like_the_model() -> None:
    durations = _crd_parts("duration")
    assert len(durations) == 9
    for path, schema in durations:
        (rule,) = schema["x-kubernetes-validations"]
        table = re.search(r"\{(.*?)\}", rule["rule"])
        assert table is not None, path
        assert ast.literal_eval("{" + table.group(1) + "}") == MAX_COUNT, path
        assert "100 years" in rule["message"]


def test_crd_bounds_match_the_model() -> None:
    spec = _spec_schema()["properties"]["spec"]["properties"]
    keep_last = spec["checkpoints"]["properties"]["keepLast"]
    batch = spec["limits"]["properties"]["batchSize"]
    assert (keep_last["minimum"], keep_last["maximum"]) == (1, 1_000_000)
    assert (batch["minimum"], batch["maximum"]) == (1, 100_000)
    for bad in ({"checkpoints": {"keepLast": 1_000_001}}, {"limits": {"batchSize": 100_001}}):
        with pytest.raises(PolicyError):
            parse_policy(policy_document(**{"checkpoints": {}, **bad}))


def test_crd_shape() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == f"{PLURAL}.threadkeeper.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "RetentionPolicy",
        PLURAL,
        ["rp"],
    )
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["storage"] and version["served"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Interval", "Last run", "Deleted", "Suspended", "Age"]
    spec = _spec_schema()["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert rules[1:] == [
        "has(self.threads) || has(self.checkpoints) || has(self.orphans) || has(self.store)"
    ]
    status = _spec_schema()["properties"]["status"]["properties"]
    assert set(status) == {
        "observedGeneration",
        "lastRunTime",
        "lastSuccessTime",
        "nextRunTime",
        "lastRunNowHandled",
        "lastRun",
        "tables",
        "conditions",
    }
    assert set(status["lastRun"]["properties"]) == {
        "dryRun",
        "threadsDeleted",
        "checkpointsDeleted",
        "blobsDeleted",
        "writesDeleted",
        "storeExpiredItemsDeleted",
        "storeIdleItemsDeleted",
        "storeExcessItemsDeleted",
        "durationSeconds",
        "outcome",
        "message",
    }
    assert status["tables"]["additionalProperties"]["properties"].keys() == {
        "bytes",
        "rowsEstimate",
    }


def test_manifests_the_model_accepts_pass_the_crd_schema() -> None:
    """The openAPI schema (minus CEL, which needs an API server) agrees on good documents."""
    schema = _spec_schema()
    for document in (
        yaml.safe_load(EXAMPLE),
        policy_document(checkpoints={}),
        policy_document(orphans={"olderThan": "1w"}, dryRun=True),
    ):
        parse_policy(document)
        jsonschema.validate(document, schema)
    bad = policy_document(checkpoints={"keepLast": 0}, limits={"maxDuration": "5 min"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_summary_fills_the_crd_last_run() -> None:
    from threadkeeper.reaper.summary import Outcome, PruneSummary, ThreadsDeleted

    summary = PruneSummary(
        policy="p",
        namespace="n",
        dry_run=False,
        outcome=Outcome.SUCCEEDED,
        message="ok",
        started_at=datetime.now(UTC),
        duration_seconds=1.5,
        threads_deleted=ThreadsDeleted(idle=2, orphan=1),
    )
    last_run = summary.last_run_status()
    status_schema = _spec_schema()["properties"]["status"]
    jsonschema.validate({"lastRun": last_run}, status_schema)
    assert last_run["threadsDeleted"]["total"] == 3
    assert RetentionPolicy.model_fields["api_version"].alias == "apiVersion"

"""The Agent Server's store API: long-term memory items, the caller's own only.

Every handler works on ``OwnerStore(store, caller)``: namespaces are the caller's, without any
trace of the owner, and another owner's items are simply absent (a get answers null, as the
Agent Server answers for a missing item).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from langgraph.store.base import InvalidNamespaceError, Item
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from threadkeeper.service import jsonbody, serialize
from threadkeeper.service.http import accepts, owner, queries, responds, services
from threadkeeper.service.problems import Problem
from threadkeeper.service.query import OptionalFlagParam, TextParam
from threadkeeper.service.schemas import StoreDelete, StoreNamespaces, StorePut, StoreSearch
from threadkeeper.service.store import OwnerStore

T = TypeVar("T")

NAMESPACE = TextParam("namespace", "the item's namespace, its labels joined with '.'")
KEY = TextParam("key", "the item's key")
REFRESH_TTL = OptionalFlagParam("refresh_ttl")


def _store(request: Request) -> OwnerStore:
    return OwnerStore(services(request).store, owner(request))


async def _checked(call: Awaitable[T]) -> T:
    """The store's answer; what it refuses (a bad filter operator, namespace) is a 422."""
    try:
        return await call
    except (InvalidNamespaceError, ValueError) as exc:
        raise Problem(422, str(exc), kind="invalid-input") from exc


def _item(item: Item) -> dict[str, Any]:
    return item.dict()


@responds({204: ("Stored", None)})
@accepts(StorePut, required=True)
async def put_item(request: Request, body: StorePut) -> Response:
    await _checked(
        _store(request).aput(
            tuple(body.namespace), body.key, body.value, index=body.index, ttl=body.ttl
        )
    )
    return Response(status_code=204)


@queries(NAMESPACE, KEY, REFRESH_TTL)
async def get_item(request: Request) -> Response:
    raw_namespace, key = NAMESPACE.of(request), KEY.of(request)
    if raw_namespace is None or key is None:
        raise Problem(422, "namespace and key are required", kind="invalid-input")
    jsonbody.check_text(raw_namespace, "namespace")
    jsonbody.check_text(key, "key")
    item = await _checked(
        _store(request).aget(
            tuple(raw_namespace.split(".")), key, refresh_ttl=REFRESH_TTL.of(request)
        )
    )
    return serialize.JSON(None if item is None else _item(item))


@responds({204: ("Deleted (or never there)", None)})
@accepts(StoreDelete, required=True)
async def delete_item(request: Request, body: StoreDelete) -> Response:
    await _checked(_store(request).adelete(tuple(body.namespace), body.key))
    return Response(status_code=204)


@accepts(StoreSearch)
async def search_items(request: Request, body: StoreSearch) -> Response:
    items = await _checked(
        _store(request).asearch(
            tuple(body.namespace_prefix),
            query=body.query,
            filter=body.filter,
            limit=body.limit,
            offset=body.offset,
            refresh_ttl=body.refresh_ttl,
        )
    )
    return serialize.JSON({"items": [_item(i) for i in items]})


@accepts(StoreNamespaces)
async def list_namespaces(request: Request, body: StoreNamespaces) -> Response:
    found = await _checked(
        _store(request).alist_namespaces(
            prefix=None if body.prefix is None else tuple(body.prefix),
            suffix=None if body.suffix is None else tuple(body.suffix),
            max_depth=body.max_depth,
            limit=body.limit,
            offset=body.offset,
        )
    )
    return serialize.JSON({"namespaces": [list(ns) for ns in found]})


routes = [
    Route("/store/items", put_item, methods=["PUT"]),
    Route("/store/items", get_item, methods=["GET"]),
    Route("/store/items", delete_item, methods=["DELETE"]),
    Route("/store/items/search", search_items, methods=["POST"]),
    Route("/store/namespaces", list_namespaces, methods=["POST"]),
]

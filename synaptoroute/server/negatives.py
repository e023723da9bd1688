"""``/negatives``: the router's negative examples (texts that must route nowhere).

Reads take the service's read guard, changes its change guard (the same bearer token
and read-only switch as route changes). Changes run off the event loop, like every
other route change, because they encode and write the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..router import AdaptiveRouter
from .schemas import Utterances

__all__ = ["NegativesChange", "NegativesList", "negatives_router"]


class NegativesChange(BaseModel):
    """Negative examples to add or delete."""

    model_config = ConfigDict(extra="forbid")

    texts: Utterances = Field(min_length=1)


class NegativesList(BaseModel):
    """Every negative example."""

    negatives: list[str]


class NegativesAdded(BaseModel):
    """The negative examples that were new."""

    added: list[str]


class NegativesDeleted(BaseModel):
    """How many negative examples were removed."""

    deleted: int


def negatives_router(
    get_router: Callable[[], AdaptiveRouter],
    change: Sequence[Any],
    read: Sequence[Any],
    responses: Callable[..., dict[int | str, dict[str, Any]]],
) -> APIRouter:
    """The ``/negatives`` endpoints.

    Args:
        get_router: the service's router (read at each request).
        change: dependencies guarding changes (token, read-only switch).
        read: dependencies guarding reads.
        responses: the service's documented error responses for some status codes.
    """
    api = APIRouter(tags=["negatives"])

    @api.get(
        "/negatives",
        response_model=NegativesList,
        dependencies=list(read),
        responses=responses(401),
    )
    async def list_negatives() -> NegativesList:
        """Every negative example."""
        return NegativesList(negatives=get_router().negatives)

    @api.post(
        "/negatives",
        response_model=NegativesAdded,
        dependencies=list(change),
        responses=responses(401, 403, 413, 415, 422, 500, 503),
    )
    async def add_negatives(body: NegativesChange) -> NegativesAdded:
        """Add negative examples: a query nearer to one of them than to every route
        gets no route. Answers those that were new."""
        added = await anyio.to_thread.run_sync(get_router().add_negatives, body.texts)
        return NegativesAdded(added=added)

    @api.delete(
        "/negatives",
        response_model=NegativesDeleted,
        dependencies=list(change),
        responses=responses(401, 403, 413, 415, 422, 500, 503),
    )
    async def delete_negatives(body: NegativesChange) -> NegativesDeleted:
        """Remove negative examples; answers how many were there."""
        deleted = await anyio.to_thread.run_sync(get_router().delete_negatives, body.texts)
        return NegativesDeleted(deleted=deleted)

    return api

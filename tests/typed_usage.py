"""User code as the docs write it, type-checked by ``mypy`` (pyproject's ``files``):
an annotation that rejects documented usage fails CI, not the user's type check.
``test_public_api`` runs it, so it also stays true at run time."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from synaptoroute import AdaptiveRouter, HashingEncoder, Route, RouteMatch


class ListEncoder:
    """A custom encoder written the usual way: ``texts: list[str]`` (the protocol
    asked for ``Sequence[str]``, which such an encoder does not accept)."""

    model_id = "list-encoder"
    dimension = 16

    def __init__(self) -> None:
        self._inner = HashingEncoder(dimension=16)

    def encode(self, texts: list[str]) -> NDArray[np.float32]:
        """Embed ``texts``."""
        return self._inner.encode(texts)


def route_with_a_custom_encoder(query: str) -> RouteMatch:
    """Routes ``query`` over one route, with :class:`ListEncoder`."""
    router = AdaptiveRouter(encoder=ListEncoder())
    router.add_route(Route(name="billing", utterances=["I need a refund", "my invoice"]))
    batch: list[RouteMatch] = router.query_batch([query])
    assert batch[0] == router.query(query)
    return router.query(query)


class TenantRouter(AdaptiveRouter):
    """An application's subclass: ``async with`` must give it back as itself."""

    tenant = "acme"


async def route_in_a_subclass(query: str) -> str:
    """Routes ``query`` inside ``async with TenantRouter(...)``, naming the tenant
    (``__aenter__`` was annotated to return ``AdaptiveRouter``: mypy refused
    ``router.tenant``)."""
    async with TenantRouter(encoder=ListEncoder()) as router:
        router.add_route(Route(name="billing", utterances=["I need a refund", "my invoice"]))
        return f"{router.tenant}:{(await router.aquery(query)).name}"


async def route_in_an_opened_subclass(query: str) -> str:
    """The same through ``TenantRouter.open(...)`` (annotated ``AdaptiveRouter`` too)."""
    async with TenantRouter.open(":memory:", ListEncoder()) as router:
        router.add_route(Route(name="billing", utterances=["I need a refund", "my invoice"]))
        return f"{router.tenant}:{(await router.aquery(query)).name}"

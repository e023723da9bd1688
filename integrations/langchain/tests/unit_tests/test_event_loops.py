"""Any event loop: threads each running ``asyncio.run(chain.ainvoke(...))`` share one router,
as Streamlit, Celery, Django and notebooks do; every answer equals the sync one."""

from __future__ import annotations

import asyncio
import threading

from langchain_core.runnables import RunnableLambda
from langchain_synaptoroute import (
    SynaptorouteClassifier,
    SynaptorouteEmbeddings,
    SynaptorouteRouter,
)

from synaptoroute import AdaptiveRouter, Encoder, Route, default_encoder


def _in_threads(n: int, work: object) -> list[object]:
    results: list[object] = [None] * n
    start = threading.Barrier(n)

    def run(slot: int) -> None:
        start.wait()
        try:
            results[slot] = asyncio.run(work(slot))  # type: ignore[operator]
        except BaseException as exc:
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_four_threads_each_running_asyncio_run_on_one_chain(
    encoder: Encoder,
    routes: dict[str, list[str]],
    labelled: list[tuple[str, str | None]],
) -> None:
    branches = {
        name: (texts, RunnableLambda(lambda q, n=name: n)) for name, texts in routes.items()
    }
    chain = SynaptorouteRouter.from_branches(
        branches, default=RunnableLambda(lambda q: "default"), encoder=encoder
    )
    classifier = chain.as_classifier()
    texts = [text for text, _ in labelled] * 5
    expected = [name or "default" for _, name in labelled] * 5
    expected_matches = [classifier.invoke(t) for t in texts]

    async def work(slot: int) -> tuple[list[str], list[object]]:
        outputs = await asyncio.gather(*(chain.ainvoke(t) for t in texts))
        matches = await classifier.abatch(texts)
        await chain.router.stop()
        return list(outputs), list(matches)

    for result in _in_threads(4, work):
        assert not isinstance(result, BaseException), result
        assert result == (expected, expected_matches)


def test_chains_built_without_an_encoder_share_the_default_model(
    routes: dict[str, list[str]],
) -> None:
    branches = {
        name: (texts, RunnableLambda(lambda q, n=name: n)) for name, texts in routes.items()
    }
    first = SynaptorouteRouter.from_branches(branches)
    second = SynaptorouteRouter.from_branches(branches)
    assert first.router.encoder is second.router.encoder is default_encoder()
    router = AdaptiveRouter()
    router.add_route(Route(name="billing", utterances=routes["billing"]))
    assert SynaptorouteClassifier(router=router).router.encoder is default_encoder()
    assert SynaptorouteEmbeddings().synaptoroute_encoder is default_encoder()

"""Choices and utterances that cannot work are refused; thin choices warn once; evicted
routers are still stopped; the default model is shared."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RouterQueryEngine
from llama_index.core.tools import QueryEngineTool, ToolMetadata
from llama_index.selectors.synaptoroute import SynaptorouteEmbedding, SynaptorouteSelector
from llamaindex_support import DESCRIPTIONS, UTTERANCES, EchoEngine
from typing_extensions import Self

from synaptoroute import Encoder, InvalidInputError, NoRouteMatchedError, default_encoder
from synaptoroute.testing import GatedEncoder


def test_an_utterance_key_misspelling_a_choice_is_refused(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # The misspelt key leaves "billing" without utterances: that is what gives it away.
    typo = {"biling": UTTERANCES["billing"], "general": UTTERANCES["general"]}
    selector = SynaptorouteSelector.from_defaults(utterances=typo, encoder=encoder)
    with pytest.raises(InvalidInputError, match=r"'biling'.*did you mean 'billing'"):
        selector.select(choices, "I need a refund")
    # A set the key is not close to goes on; the set it misspells is refused later.
    other = SynaptorouteSelector.from_defaults(utterances=typo, encoder=encoder)
    weather = [ToolMetadata(name="weather", description="Forecasts"), choices[2]]
    with pytest.warns(UserWarning, match="fewer than 3"):
        assert other.select(weather, "will it rain tomorrow").ind == 0
    with pytest.raises(InvalidInputError, match=r"did you mean 'billing'"):
        other.select(choices, "I need a refund")


_WEATHER = {
    "weather": ["Will it rain tomorrow?", "What's the forecast?", "How hot is it today?"],
}


def _tools(names: list[str]) -> list[QueryEngineTool]:
    descriptions = {**DESCRIPTIONS, "weather": "Weather forecasts: rain, sun, temperature"}
    descriptions["billing_eu"] = "Invoices and VAT for European customers"
    return [
        QueryEngineTool.from_defaults(EchoEngine(name=n), name=n, description=descriptions[n])
        for n in names
    ]


@pytest.mark.parametrize("first", ["billing", "weather"])
def test_one_selector_serves_engines_with_different_tools(encoder: Encoder, first: str) -> None:
    # Keys for the other engine's tools were refused as unknown, and the names seen
    # were only remembered when nothing was refused: with disjoint tool sets every
    # selection raised, in either order.
    utterances = {k: UTTERANCES[k] for k in ("billing", "general")} | _WEATHER
    selector = SynaptorouteSelector.from_defaults(utterances=utterances, encoder=encoder)
    engines = {
        name: RouterQueryEngine(
            selector=selector, query_engine_tools=_tools([name, "general"]), llm=MockLLM()
        )
        for name in ("billing", "weather")
    }
    queries = {"billing": "I was charged twice", "weather": "Will it rain on Sunday?"}
    order = [first, *(n for n in engines if n != first)]
    for name in order * 2:
        assert str(engines[name].query(queries[name])) == f"[{name}] {queries[name]}"


def test_names_alike_in_different_tool_sets_are_not_typos(encoder: Encoder) -> None:
    # "billing_eu" is close to "billing", but "billing" has utterances of its own.
    eu = ["My VAT number is missing", "Invoice in euros", "EU billing address"]
    utterances = {**UTTERANCES, "billing_eu": eu}
    selector = SynaptorouteSelector.from_defaults(utterances=utterances, encoder=encoder)
    for names in (["billing", "general"], ["billing_eu", "general"]):
        choices = [t.metadata for t in _tools(names)]
        assert selector.select(choices, "I need an invoice").ind == 0


class _Watched(set[str]):
    """A set that records, at each change, whether the selector's lock was held."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self.lock = lock
        self.held: list[bool] = []

    def update(self, *others: Iterable[str]) -> None:
        self.held.append(self.lock.locked())
        super().update(*others)

    def add(self, item: str) -> None:
        self.held.append(self.lock.locked())
        super().add(item)

    def __ior__(self, other: AbstractSet[str]) -> Self:  # type: ignore[override,misc]
        self.held.append(self.lock.locked())
        return super().__ior__(other)


def test_names_seen_and_warnings_are_recorded_under_the_lock(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # Two threads selecting first over two choice sets read and replaced these sets
    # unlocked: one's names could be lost, and both could warn about a choice. Whether
    # the lock is held at each change is checked directly (no timing).
    thin = {**UTTERANCES, "general": ["When are you open?"]}
    selector = SynaptorouteSelector.from_defaults(utterances=thin, encoder=encoder)
    seen, warned = _Watched(selector._lock), _Watched(selector._lock)
    selector._seen_names, selector._warned = seen, warned
    with pytest.warns(UserWarning, match="fewer than 3"):
        selector.select(choices, "I need a refund")
    selector.select(choices[1:], "my app crashes")
    assert selector._seen_names is seen and selector._warned is warned
    assert seen == set(DESCRIPTIONS) and warned == {"'general'"}
    assert seen.held and warned.held
    assert all(seen.held + warned.held)


def test_tools_sharing_a_name_are_refused_when_utterances_are_keyed_by_name(
    encoder: Encoder,
) -> None:
    # QueryEngineTool.from_defaults without name= names every tool "query_engine_tool".
    tools = [
        QueryEngineTool.from_defaults(EchoEngine(name=name), description=text)
        for name, text in DESCRIPTIONS.items()
    ]
    shared = tools[0].metadata.name
    assert all(t.metadata.name == shared for t in tools)
    selector = SynaptorouteSelector.from_defaults(
        utterances={shared: ["I need a refund"]}, encoder=encoder
    )
    with pytest.raises(InvalidInputError, match="share the name 'query_engine_tool'"):
        selector.select([t.metadata for t in tools], "I need a refund")
    # Without utterances the names are never looked up, so such tools still route.
    plain = SynaptorouteSelector.from_defaults(encoder=encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert plain.select([t.metadata for t in tools], "refund for my invoice").ind == 0


def test_a_choice_with_fewer_than_three_utterances_warns_once(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    thin = {**UTTERANCES, "general": ["When are you open?"]}
    selector = SynaptorouteSelector.from_defaults(utterances=thin, encoder=encoder)
    with pytest.warns(UserWarning, match="fewer than 3") as caught:
        selector.select(choices, "I need a refund")
    assert len(caught) == 1
    assert "'general'" in str(caught[0].message)
    assert "'billing'" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second choice set with the same thin choice
        selector.select(choices[1:], "my app crashes")
    full = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full.select(choices, "I need a refund")


def test_names_remembered_for_warnings_and_typos_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every choice name ever offered was kept twice (seen, warned about): per-user
    # tool names grew both sets without end while the routers stayed bounded.
    from llama_index.selectors.synaptoroute import selector as module

    from synaptoroute import HashingEncoder

    monkeypatch.setattr(module, "_MAX_WARNED", 50)
    selector = SynaptorouteSelector.from_defaults(
        encoder=HashingEncoder(), utterances={"billing": ["refund", "invoice", "receipt"]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(40):
            choices = [
                ToolMetadata(name=f"u{i}_{kind}", description=f"{kind} questions")
                for kind in ("billing", "tech", "shipping")
            ]
            selector.select([*choices, ToolMetadata(name="billing", description="b")], "x")
    assert len(selector._warned) <= 50
    assert selector._seen_names == {"billing"}  # only names utterances are given for


def test_choices_without_a_name_warn_once_that_they_take_no_utterances(
    encoder: Encoder,
) -> None:
    # Plain strings were named "choice 0, choice 1" with advice to pass utterances by
    # name (which they have none of), and a later set warned of its new positions only.
    selector = SynaptorouteSelector.from_defaults(encoder=encoder)
    with pytest.warns(UserWarning, match="without a name") as caught:
        assert selector.select(["Invoices and refunds", "Bugs and crashes"], "refund").ind == 0
    assert len(caught) == 1 and "ToolMetadata(name=" in str(caught[0].message)
    assert "choice 0" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selector.select(["Shipping", "Returns", "Careers"], "where is my parcel")


async def test_the_few_examples_warning_names_the_callers_line(
    encoder: Encoder, engine_tools: list[QueryEngineTool]
) -> None:
    # Filtered by where it is issued, the warning must be blamed on the code that
    # selects, not on LlamaIndex's select() (a fixed stacklevel pointed there).
    choices = [tool.metadata for tool in engine_tools]
    entry_points = {
        "select": lambda selector: selector.select(choices, "I need a refund"),
        "engine": lambda selector: RouterQueryEngine(
            selector=selector, query_engine_tools=engine_tools, llm=MockLLM()
        ).query("I need a refund"),
    }
    for entry, call in entry_points.items():
        selector = SynaptorouteSelector.from_defaults(encoder=encoder)
        with pytest.warns(UserWarning, match="fewer than 3") as caught:
            call(selector)
        assert [w.filename for w in caught] == [__file__], entry
    selector = SynaptorouteSelector.from_defaults(encoder=encoder)
    with pytest.warns(UserWarning, match="fewer than 3") as caught:
        await selector.aselect(choices, "I need a refund")
    assert [w.filename for w in caught] == [__file__]  # not the worker thread's
    await selector.aclose()


@pytest.mark.filterwarnings("ignore:choices with fewer than")
def test_a_name_without_words_routes_on_the_description(encoder: Encoder) -> None:
    # "_" as a phrase is "": it was appended as an utterance, and the Route refused it
    # with a raw pydantic ValidationError.
    selector = SynaptorouteSelector.from_defaults(encoder=encoder)
    for name in ("_", "-", "  "):
        choices = [
            ToolMetadata(name=name, description="Refunds and invoices"),
            ToolMetadata(name="tech", description="Crashes and log-in problems"),
        ]
        assert selector.select(choices, "I want a refund").ind == 0, name
    nameless = [ToolMetadata(name="_", description=" "), ToolMetadata(name="tech", description="x")]
    with pytest.raises(InvalidInputError, match="choice '_' has nothing to route by"):
        selector.select(nameless, "I want a refund")
    # Utterances keyed by such a name still describe its choice.
    keyed = SynaptorouteSelector.from_defaults(
        utterances={"_": ["I want my money back"]}, encoder=encoder
    )
    assert keyed.select(nameless, "I want a refund").ind == 0
    # A description the model reads nothing of is skipped like a blank one (the core
    # refuses it as an utterance: it would be embedded as "").
    for description in ("\u200b\ufeff", " \x00 "):
        invisible = [
            ToolMetadata(name="refunds", description=description),
            ToolMetadata(name="tech", description="Crashes and log-in problems"),
        ]
        assert selector.select(invisible, "I want a refund").ind == 0, repr(description)
        with pytest.raises(InvalidInputError, match="choice '_' has nothing to route by"):
            selector.select([invisible[1], ToolMetadata(name="_", description=description)], "x")


def test_aclose_stops_routers_evicted_from_the_cache(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, max_choice_sets=1
    )

    async def main() -> list[bool]:
        await selector.aselect(choices, "I need a refund")
        first = selector.router_for(choices)
        assert first.worker.running
        await selector.aselect(choices[:2], "my app crashes")  # evicts the first set
        await selector.aclose()
        return [first.worker.running, selector.router_for(choices[:2]).worker.running]

    assert asyncio.run(main()) == [False, False]


@pytest.mark.filterwarnings("ignore:choices without a name")
def test_evicted_choice_sets_stop_their_workers_on_a_long_lived_loop(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # Each evicted router kept its batching worker (a thread) until aclose(): a
    # service whose tool sets vary ran out of threads on its one loop.
    selector = SynaptorouteSelector.from_defaults(encoder=encoder, max_choice_sets=2)

    def workers() -> int:
        return sum(t.name == "synaptoroute-batch-worker" for t in threading.enumerate())

    async def main() -> tuple[int, int]:
        before = workers()
        for i in range(12):
            tools = [f"topic {i} invoices", f"topic {i} crashes", "refunds and money back"]
            selection = await selector.aselect(tools, "I want my money back")
            assert selection.ind == 2
        # A worker stops on this loop, when it next runs: give it the turns it needs.
        deadline = time.monotonic() + 60  # a bound for a hang, not a speed
        while workers() - before > 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = workers() - before
        running = sum(any(w.running for w in r.workers) for r in selector._cache._retired)
        await selector.aclose()
        return left, running

    left, running = asyncio.run(main())
    assert running == 0  # only the two cached choice sets kept a worker
    assert left <= 2


async def _cancelled_while_building(
    selector: SynaptorouteSelector,
    choices: list[ToolMetadata],
    gated: GatedEncoder,
) -> None:
    """An aselect cancelled while its choice set's first build is held, then the
    build let go."""
    task = asyncio.create_task(selector.aselect(choices, "I need a refund"))
    await asyncio.to_thread(gated.entered.wait, 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gated.open()


def test_a_selection_cancelled_while_its_choice_set_builds_is_not_counted_for_good(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # The build (in a thread) counted the aselect; cancelled meanwhile (wait_for around
    # a slow first embedding), nothing released it: the set's worker was never
    # stopped once evicted, and the selector held its router for good.
    gated = GatedEncoder(encoder)
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=gated, max_choice_sets=1
    )

    async def main() -> bool:
        await _cancelled_while_building(selector, choices, gated)
        for _ in range(600):  # the build ends in its thread, then releases on this loop
            if not selector._cache._busy and selector._cache._routers:
                break
            await asyncio.sleep(0.05)
        return not selector._cache._busy and bool(selector._cache._routers)

    assert asyncio.run(main())


def test_a_selection_cancelled_as_its_loop_ends_is_not_counted_for_good(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # asyncio.run's teardown cancels the task running the build's thread too, so a
    # callback of that task never released the count (a service calling asyncio.run
    # per request with a timeout kept one router per time-out).
    gated = GatedEncoder(encoder)
    selector = SynaptorouteSelector.from_defaults(encoder=gated, max_choice_sets=1)

    # Returns at once: the teardown cancels the build's task, then waits for its
    # thread (shutdown_default_executor).
    asyncio.run(_cancelled_while_building(selector, choices, gated))
    assert selector._cache._routers and not selector._cache._busy


def test_choices_sharing_a_name_route_on_their_descriptions() -> None:
    # QueryEngineTool.from_defaults names every tool "query_engine_tool": the name
    # became a text of each choice, so a query near it matched them all, tied, and the
    # first was selected over on_no_match="raise".
    selector = SynaptorouteSelector.from_defaults(on_no_match="raise", threshold=0.5)
    tools = [
        QueryEngineTool.from_defaults(query_engine=EchoEngine(name="a"), description=description)
        for description in ("Refunds and invoices", "Crashes and log-in problems")
    ]
    shared = [tool.metadata for tool in tools]
    assert {m.name for m in shared} == {"query_engine_tool"}
    with pytest.raises(NoRouteMatchedError):
        selector.select(shared, "which query engine tool")
    result = selector.select(shared, "I want a refund for my invoice")
    assert result.ind == 0 and "'query_engine_tool' (choice 0)" in result.reason
    assert selector.select(shared, "the app crashes when I log in").ind == 1


def test_a_choice_whose_fields_are_not_text_is_a_clear_error(encoder: Encoder) -> None:
    selector = SynaptorouteSelector.from_defaults(encoder=encoder)
    fine = ToolMetadata(name="tech", description="Crashes")
    for bad in (
        ToolMetadata(name="a", description=None),  # type: ignore[arg-type]
        ToolMetadata(name=5, description="Refunds"),  # type: ignore[arg-type]
        ToolMetadata(name="a", description=["Refunds"]),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidInputError, match="choice 1: a choice's description must"):
            selector.select([fine, bad], "x")
        with pytest.raises(InvalidInputError, match="choice 1: a choice's description must"):
            asyncio.run(selector.aselect([fine, bad], "x"))


def test_an_evicted_set_whose_selection_has_not_started_its_worker_is_kept_to_stop(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # An evicted router without a running worker was let go at the next eviction, even
    # while an aselect that had built it was about to start one: that worker then ran
    # past aclose(). The race, played in order: built and counted, evicted and pruned
    # by two other builds, then its worker starts.
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, max_choice_sets=1
    )

    async def main() -> list[bool]:
        built = selector._build(
            selector.choice_key(choices), selector._routes(choices, selector._utterances), True
        )
        selector.router_for(choices[:2])  # evicts it
        selector.router_for(choices[1:])  # prunes what runs no worker
        assert any(r is built for r in selector._cache._retired)  # counted: kept
        await built.aquery_top_k("I need a refund", 1)  # its worker starts now
        selector._cache.release(built)
        await selector.aclose()
        return [w.running for w in built.workers]

    assert asyncio.run(main()) == [False]


def test_aclose_on_one_loop_keeps_evicted_routers_another_loop_runs(
    encoder: Encoder, choices: list[ToolMetadata]
) -> None:
    # aclose() forgot every evicted router after stopping this loop's workers, so a
    # later aclose() on another loop never stopped that loop's worker of one.
    selector = SynaptorouteSelector.from_defaults(
        utterances=UTTERANCES, encoder=encoder, max_choice_sets=1
    )
    # Two loops by hand: asyncio.Runner is Python 3.11+, and the package supports 3.10.
    one, two = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        one.run_until_complete(selector.aselect(choices, "I need a refund"))
        two.run_until_complete(selector.aselect(choices, "my app crashes"))
        first = selector.router_for(choices)
        assert [w.running for w in first.workers] == [True, True]
        one.run_until_complete(selector.aselect(choices[:2], "my app crashes"))  # evicts it
        one.run_until_complete(selector.aclose())
        assert [w.running for w in first.workers] == [False, True]  # the other loop's
        two.run_until_complete(selector.aclose())
        assert not any(w.running for w in first.workers)
        assert selector._cache._retired == []  # nothing left to stop: forgotten
    finally:
        one.close()
        two.close()


def test_selectors_and_embeddings_built_without_an_encoder_share_one_model() -> None:
    shared = default_encoder()
    assert SynaptorouteEmbedding().encoder is shared
    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES)
    assert selector.encoder is shared
    assert SynaptorouteSelector.from_defaults().encoder is shared


def test_four_threads_each_running_asyncio_run_on_one_engine(
    encoder: Encoder, engine_tools: list[QueryEngineTool]
) -> None:
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RouterQueryEngine
    from llamaindex_support import CLEAR_QUERIES

    selector = SynaptorouteSelector.from_defaults(utterances=UTTERANCES, encoder=encoder)
    engine = RouterQueryEngine(selector=selector, query_engine_tools=engine_tools, llm=MockLLM())
    names = list(DESCRIPTIONS)
    queries = [q for q, _ in CLEAR_QUERIES] * 10
    expected = [f"[{names[i]}] {q}" for q, i in CLEAR_QUERIES] * 10
    results: list[object] = [None] * 4
    start = threading.Barrier(4)

    async def work() -> list[str]:
        try:
            answers = await asyncio.gather(*(engine.aquery(q) for q in queries))
            return [str(a) for a in answers]
        finally:
            await selector.aclose()

    def run(slot: int) -> None:
        start.wait()
        try:
            results[slot] = asyncio.run(work())
        except BaseException as exc:
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4

"""SynaptorouteDecisions: Choice questions answered by similarity, with the real bundled model.

Skipped on a langchain-core without decision models (< 1.8, the minimum-versions tier),
where test_imports.py checks that the import names the release needed.
"""

from __future__ import annotations

import asyncio
import copy
import math
import pickle
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core.decisions")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.decisions import Box, Choice, ClassifierRequest, Noul, Score
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.runnables import ConfigurableField, RunnableConfig
from langchain_synaptoroute import SynaptorouteDecisions
from langchain_synaptoroute.decisions import UnsupportedQuestionError

import synaptoroute.router as router_module
from synaptoroute import AdaptiveRouter, Encoder, InvalidInputError
from synaptoroute.testing import GatedEncoder, RecordingEncoder

#: A support desk's departments, described as a provider's Choice would be.
DESK = {
    "billing": "Payments, invoices, refunds, charges and subscriptions.",
    "technical": "Bugs, crashes, errors, login problems and integration failures.",
    "sales": "Pricing, plans, quotes and purchasing questions.",
    "shipping": "Delivery, tracking, parcels and shipping addresses.",
}
#: Texts and the department the bundled model gives each from DESK alone.
ROUTED = [
    ("I was charged twice this month", "billing"),
    ("The app crashes when I open it", "technical"),
    ("How much does the enterprise plan cost?", "sales"),
    ("Where is my parcel? The tracking hasn't moved", "shipping"),
    ("I can't log in to my account", "technical"),
]


def desk(**criteria: Any) -> Choice:
    """The department question (``criteria`` replaces DESK's)."""
    return Choice(instructions="Which team should handle this request?", criteria=criteria or DESK)


def ask(state: Any, **questions: Any) -> ClassifierRequest:
    """A request for ``state``; the department question when none is given."""
    return {"state": state, "questions": questions or {"dept": desk()}}


@pytest.fixture
def decisions(encoder: Encoder) -> SynaptorouteDecisions:
    """A decision model over the shared real encoder."""
    return SynaptorouteDecisions(encoder=encoder)


@pytest.mark.parametrize(("text", "label"), ROUTED)
def test_choice_routes_each_text_to_its_department(
    decisions: SynaptorouteDecisions, text: str, label: str
) -> None:
    response = decisions.invoke(ask(text))
    assert response.choices["dept"].choice == label
    assert response.model == decisions.model == "synaptoroute:all-MiniLM-L6-v2-onnx-int8"
    assert response.usage is None  # no tokens


def test_probabilities_cover_every_label_sum_to_one_and_follow_scores(
    decisions: SynaptorouteDecisions,
) -> None:
    text = "Can I get a refund for the crash that lost my work?"
    answer = decisions.invoke(ask(text)).choices["dept"]
    assert set(answer.probabilities) == set(DESK)
    assert math.isclose(sum(answer.probabilities.values()), 1.0)
    # The same router's ranking: probabilities in the order of the scores, the best
    # score the confidence (a similarity, here in [0, 1] as it is).
    router = decisions._cache.get(decisions._asked({"q": desk()})["q"].key)
    assert router is not None
    ranked = router.query_top_k(text, len(DESK))
    labels = sorted(DESK)  # route i is the i-th label in the cache key's (sorted) order

    def label(match: Any) -> str:
        return labels[int(match.candidate)]

    assert [label(m) for m in ranked] == sorted(
        answer.probabilities, key=lambda name: -answer.probabilities[name]
    )
    assert answer.choice == label(ranked[0])
    assert 0 < ranked[0].score < 1
    assert answer.confidence == pytest.approx(ranked[0].score)
    # Softmax of score / temperature: the log-odds of two labels is their score gap / T.
    best, second = ranked[0], ranked[1]
    gap = math.log(answer.probabilities[label(best)] / answer.probabilities[label(second)])
    assert gap == pytest.approx((best.score - second.score) / decisions.temperature)


def test_temperature_sharpens_without_changing_the_choice(encoder: Encoder) -> None:
    text = "my invoice shows the wrong price"
    soft = SynaptorouteDecisions(encoder=encoder, temperature=1.0).invoke(ask(text))
    sharp = SynaptorouteDecisions(encoder=encoder, temperature=0.01).invoke(ask(text))
    assert soft.choices["dept"].choice == sharp.choices["dept"].choice == "billing"
    assert max(soft.choices["dept"].probabilities.values()) < 0.5
    assert max(sharp.choices["dept"].probabilities.values()) > 0.9


def test_confidence_is_the_best_score_clipped(encoder: Encoder) -> None:
    # Every label's only example is its text: an exact match scores 1 (or a hair above
    # in float32), which is clipped to 1.
    question = Choice(instructions="?", criteria={"greeting": "hello there", "other": "tax law"})
    answer = SynaptorouteDecisions(encoder=encoder).invoke(ask("greeting: hello there", q=question))
    assert answer.choices["q"].choice == "greeting"
    assert answer.choices["q"].confidence == pytest.approx(1.0, abs=1e-6)
    assert 0.0 <= answer.choices["q"].confidence <= 1.0


def test_utterances_change_an_answer(encoder: Encoder) -> None:
    text = "my cat walked across the keyboard"
    plain = SynaptorouteDecisions(encoder=encoder).invoke(ask(text)).choices["dept"]
    assert plain.choice != "shipping"
    taught = SynaptorouteDecisions(
        encoder=encoder, utterances={"shipping": ["my cat walked on the keyboard"]}
    ).invoke(ask(text))
    assert taught.choices["dept"].choice == "shipping"
    assert taught.choices["dept"].confidence > plain.confidence


def test_label_phrase_and_description_are_the_examples(recording_encoder: RecordingEncoder) -> None:
    question = Choice(
        instructions="?",
        criteria={
            "needs_refund": "The customer wants money back.",
            "other": {"covers": ["anything else", "greetings"], "priority": 2},
            "escalate": None,
        },
    )
    decisions = SynaptorouteDecisions(
        encoder=recording_encoder, utterances={"escalate": ["I want your manager"]}
    )
    decisions.invoke(ask("hi", q=question))
    routes, query = recording_encoder.calls
    assert sorted(routes) == sorted(
        [
            "needs refund: The customer wants money back.",
            "other: covers: anything else; greetings; priority: 2",
            "escalate",
            "I want your manager",
        ]
    )
    assert query == ["hi"]


def test_a_second_call_with_the_same_question_reuses_its_router(
    recording_encoder: RecordingEncoder,
) -> None:
    decisions = SynaptorouteDecisions(encoder=recording_encoder)
    decisions.invoke(ask("I was charged twice"))
    assert len(decisions._cache) == 1
    recording_encoder.clear()
    # The same labels and criteria, in another order: the same router; only the text
    # is embedded.
    reordered = Choice(instructions="Other words", criteria=dict(reversed(DESK.items())))
    decisions.invoke(ask("where is my parcel", dept=reordered))
    assert recording_encoder.calls == [["where is my parcel"]]
    assert len(decisions._cache) == 1
    # Other criteria: another router.
    decisions.invoke(ask("hello", q=desk(yes="agree", no="disagree")))
    assert len(decisions._cache) == 2


def test_least_recently_used_question_is_dropped(recording_encoder: RecordingEncoder) -> None:
    decisions = SynaptorouteDecisions(encoder=recording_encoder, max_question_sets=1)
    first, second = desk(), desk(yes="agree", no="disagree")
    decisions.invoke(ask("hi", q=first))
    decisions.invoke(ask("hi", q=second))
    assert len(decisions._cache) == 1
    recording_encoder.clear()
    decisions.invoke(ask("hi", q=first))  # rebuilt: its examples are embedded again
    assert len(recording_encoder.calls[0]) == len(DESK)


async def test_a_router_built_for_an_async_call_is_not_stopped_under_it(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The async path counted its call on a router it had to build only once the
    # build's thread had returned: a build of another question in between evicted the
    # router uncounted and stopped its worker (started by a call that had finished),
    # and this call's query met the stopping worker (RouterClosedError). Played in
    # order: the call finds no router, another call's router is there by the time its
    # thread looks, and a third question's build evicts it before the thread returns.
    decisions = SynaptorouteDecisions(encoder=encoder, max_question_sets=1)
    await decisions.ainvoke(ask("I was charged twice"))  # built; its worker started
    cache = decisions._cache
    first = cache.get(decisions._asked({"dept": desk()})["dept"].key)
    assert first is not None and any(w.running for w in first.workers)

    looked: list[bool] = []
    real_get = cache.get

    def get(key: Any, *, busy: bool = False) -> Any:
        if busy and not looked:  # this call looks before the other has built it
            looked.append(True)
            return None
        return real_get(key, busy=busy)

    real_router_for = SynaptorouteDecisions._router_for
    other = decisions._asked({"q": desk(yes="agree", no="disagree")})["q"]

    def router_for(self: SynaptorouteDecisions, asked: Any, **kwargs: Any) -> Any:
        router = real_router_for(self, asked, **kwargs)
        if threading.current_thread() is not threading.main_thread():  # the build's
            real_router_for(self, other)  # a third question's build evicts it
        return router

    events: list[tuple[str, Any]] = []
    real_stop, real_query = router_module.stop_workers_soon, AdaptiveRouter.aquery_top_k

    def stop(router: AdaptiveRouter) -> None:
        events.append(("stop", router))
        real_stop(router)

    async def query(self: AdaptiveRouter, *args: Any, **kwargs: Any) -> Any:
        events.append(("query", self))
        return await real_query(self, *args, **kwargs)

    monkeypatch.setattr(cache, "get", get)
    monkeypatch.setattr(SynaptorouteDecisions, "_router_for", router_for)
    monkeypatch.setattr(router_module, "stop_workers_soon", stop)  # the cache's
    monkeypatch.setattr(AdaptiveRouter, "aquery_top_k", query)

    response = await decisions.ainvoke(ask("Where is my parcel? The tracking hasn't moved"))
    assert response.choices["dept"].choice == "shipping"
    # Stopped once its call was done (evicted meanwhile), not before the call queried it.
    assert [what for what, router in events if router is first] == ["query", "stop"]
    assert looked and not cache._busy


@pytest.mark.parametrize("as_the_loop_ends", [False, True])
def test_a_call_cancelled_while_its_router_builds_is_not_counted_for_good(
    encoder: Encoder, as_the_loop_ends: bool
) -> None:
    # The build counts the call in its thread; cancelled meanwhile (a timeout around a
    # slow first embedding, or asyncio.run's teardown, which cancels the thread's task
    # too), whichever of the call and the build ends second releases it.
    gated = GatedEncoder(encoder)
    decisions = SynaptorouteDecisions(encoder=gated)
    cache = decisions._cache

    async def cancelled() -> None:
        task = asyncio.create_task(decisions.ainvoke(ask("I need a refund")))
        await asyncio.to_thread(gated.entered.wait, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gated.open()

    async def main() -> None:
        await cancelled()
        for _ in range(1200):  # the build ends in its thread, then releases
            if len(cache) and not cache._busy:
                break
            await asyncio.sleep(0.05)

    # Returns once the build's thread is done (asyncio.run waits for its executor).
    asyncio.run(cancelled() if as_the_loop_ends else main())
    assert len(cache) == 1 and not cache._busy


@pytest.mark.parametrize(
    "state",
    [
        "I was charged twice",
        HumanMessage("I was charged twice"),
        [
            SystemMessage("You are a helpdesk."),
            HumanMessage("I was charged twice"),
            AIMessage("ok"),
        ],
        [{"role": "user", "content": "I was charged twice"}],
        {"messages": [HumanMessage("I was charged twice"), AIMessage("Sorry to hear")]},
    ],
    ids=["str", "message", "messages", "message-dicts", "agent-state"],
)
def test_states_read_as_text(decisions: SynaptorouteDecisions, state: Any) -> None:
    assert decisions.invoke(ask(state)).choices["dept"].choice == "billing"


def test_several_questions_are_each_answered(decisions: SynaptorouteDecisions) -> None:
    mood = Choice(
        instructions="How does the customer feel?",
        criteria={"angry": "Furious, upset, annoyed", "happy": "Pleased, grateful, delighted"},
    )
    response = decisions.invoke(ask("I am furious, you charged me twice", dept=desk(), mood=mood))
    assert {qid: a.choice for qid, a in response.choices.items()} == {
        "dept": "billing",
        "mood": "angry",
    }
    assert set(response.choices["mood"].probabilities) == {"angry", "happy"}


async def test_async_answers_as_sync(decisions: SynaptorouteDecisions) -> None:
    mood = Choice(instructions="?", criteria={"angry": "Furious", "happy": "Delighted"})
    for text, label in ROUTED:
        request = ask(text, dept=desk(), mood=mood)
        sync, other = decisions.invoke(request), await decisions.ainvoke(request)
        assert other.choices["dept"].choice == sync.choices["dept"].choice == label
        for qid in ("dept", "mood"):
            assert other.choices[qid].confidence == pytest.approx(sync.choices[qid].confidence)
            for label_, p in sync.choices[qid].probabilities.items():
                assert other.choices[qid].probabilities[label_] == pytest.approx(p, abs=1e-5)
    # The async path embedded on the routers' batching workers.
    assert any(w.stats.items for r in decisions._cache._routers.values() for w in r.workers)


async def test_batch_and_abatch(decisions: SynaptorouteDecisions) -> None:
    requests = [ask(text) for text, _ in ROUTED]
    labels = [label for _, label in ROUTED]
    assert [r.choices["dept"].choice for r in decisions.batch(requests)] == labels
    assert [r.choices["dept"].choice for r in await decisions.abatch(requests)] == labels


@pytest.mark.parametrize(
    "question",
    [
        Noul(instructions="Is this urgent?"),
        Score(instructions="How angry?", criteria=["calm", "angry"]),
        Box(instructions="Find the logo"),
    ],
    ids=["noul", "score", "box"],
)
async def test_other_questions_are_refused(
    recording_encoder: RecordingEncoder, question: Any
) -> None:
    decisions = SynaptorouteDecisions(encoder=recording_encoder)
    request = ask("Production is down!", dept=desk(), other=question)
    with pytest.raises(UnsupportedQuestionError, match="answers Choice questions only") as info:
        decisions.invoke(request)
    with pytest.raises(UnsupportedQuestionError, match="answers Choice questions only") as ainfo:
        await decisions.ainvoke(request)
    for refusal in (info.value, ainfo.value):
        # Either way LangChain code catches it: a refused input, and a missing feature.
        assert isinstance(refusal, InvalidInputError)
        assert isinstance(refusal, ValueError)
        assert isinstance(refusal, NotImplementedError)
        assert f"'other' is a {question.type!r} question" in str(refusal)
    assert recording_encoder.calls == []  # refused before anything was embedded


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (42, "type int"),
        ({"input": "hi"}, "no key 'messages' \\(keys: 'input'\\); SynaptorouteDecisions takes"),
        ([AIMessage("hello")], "no human message"),
        (["not", 3], "type list"),
        ("  \u200b\n", "empty to the model"),
        (HumanMessage(""), "empty to the model"),
    ],
)
def test_bad_states_are_refused(decisions: SynaptorouteDecisions, state: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        decisions.invoke(ask(state))


def test_dict_states_name_what_is_accepted(decisions: SynaptorouteDecisions) -> None:
    with pytest.raises(InvalidInputError, match='a dict with "messages"'):
        decisions.invoke(ask(b"bytes"))


@pytest.mark.parametrize("temperature", [0, -1.0, math.inf, math.nan, True, "0.1"])
def test_bad_temperature_is_refused(encoder: Encoder, temperature: Any) -> None:
    with pytest.raises(InvalidInputError, match="temperature"):
        SynaptorouteDecisions(encoder=encoder, temperature=temperature)


def test_bad_settings_are_refused(encoder: Encoder) -> None:
    with pytest.raises(InvalidInputError, match="max_question_sets"):
        SynaptorouteDecisions(encoder=encoder, max_question_sets=0)
    with pytest.raises(InvalidInputError, match="timeout"):
        SynaptorouteDecisions(encoder=encoder, timeout=-1)
    with pytest.raises(InvalidInputError, match=r"utterances\['billing'\]"):
        SynaptorouteDecisions(encoder=encoder, utterances={"billing": "one str"})


def test_settings_are_fixed_once_made(decisions: SynaptorouteDecisions) -> None:
    # An assignment skipped the checks, and routers already built kept the old
    # utterances: a half-applied, unchecked change.
    for name, value in [("utterances", {"billing": ["a refund"]}), ("temperature", -1.0)]:
        with pytest.raises(InvalidInputError, match=f"{name} is fixed"):
            setattr(decisions, name, value)
    assert decisions.temperature > 0


def test_any_label_string_is_answered(decisions: SynaptorouteDecisions) -> None:
    # A label is a route; a route name is stripped and refuses control characters, so
    # "refund " failed every call (RuntimeError) and "a\tb" with pydantic's error.
    odd = {"refund ": DESK["billing"], " tech\tsupport": DESK["technical"], "sales\n": None}
    answer = decisions.invoke(ask("I was charged twice", dept=desk(**odd))).choices["dept"]
    assert answer.choice == "refund "
    assert set(answer.probabilities) == set(odd)


def test_the_same_labels_in_another_order(encoder: Encoder) -> None:
    # The cached router is keyed by the labels and criteria in any order; routes were
    # named by their place in the question that built it, so the same question with
    # its labels in another order swapped the answer (and across instances sharing it).
    text = "I was charged twice this month, I want a refund"
    forward = {"billing": DESK["billing"], "technical": DESK["technical"]}
    backward = dict(reversed(forward.items()))
    first = SynaptorouteDecisions(encoder=encoder)
    for criteria in (forward, backward, forward):
        answer = first.invoke(ask(text, dept=desk(**criteria))).choices["dept"]
        assert answer.choice == "billing"
        assert list(answer.probabilities) == list(criteria)  # the question's order
    other = SynaptorouteDecisions(encoder=encoder)  # shares first's routers
    assert other.invoke(ask(text, dept=desk(**backward))).choices["dept"].choice == "billing"


def test_configurable_settings_share_the_routers(recording_encoder: RecordingEncoder) -> None:
    # configurable_fields makes an instance per call: each embedded every label again.
    decisions = SynaptorouteDecisions(encoder=recording_encoder).configurable_fields(
        temperature=ConfigurableField(id="temperature")
    )
    decisions.invoke(ask("I was charged twice"))
    recording_encoder.clear()
    for temperature in (0.02, 0.1):
        config: RunnableConfig = {"configurable": {"temperature": temperature}}
        decisions.invoke(ask("my parcel never arrived"), config)
    assert recording_encoder.calls == [["my parcel never arrived"]]  # the text, once (cached)


def test_copies_are_checked_and_pickle(decisions: SynaptorouteDecisions) -> None:
    # pydantic's model_copy skipped the checks and kept the old utterances' routers;
    # deepcopy and pickle failed on the routers' locks.
    with pytest.raises(InvalidInputError, match="temperature"):
        decisions.model_copy(update={"temperature": -1})
    text = "the weather forecast for tomorrow"
    updated = decisions.model_copy(update={"utterances": {"shipping": [text]}})
    assert updated.invoke(ask(text)).choices["dept"].choice == "shipping"
    for copy_of in (copy.deepcopy(decisions), pickle.loads(pickle.dumps(decisions))):
        assert copy_of.temperature == decisions.temperature
        assert copy_of.invoke(ask("I was charged twice")).choices["dept"].choice == "billing"


def test_misspelt_utterance_label_is_refused(encoder: Encoder) -> None:
    decisions = SynaptorouteDecisions(encoder=encoder, utterances={"biling": ["refund please"]})
    with pytest.raises(InvalidInputError, match="did you mean 'billing'"):
        decisions.invoke(ask("hi"))


def test_a_label_with_nothing_to_route_by_is_refused(decisions: SynaptorouteDecisions) -> None:
    question = Choice(instructions="?", criteria={"__": None, "billing": "Payments"})
    with pytest.raises(InvalidInputError, match=r"Choice label '__'.*nothing to route by"):
        decisions.invoke(ask("hi", q=question))


class Runs(BaseCallbackHandler):
    """Records each run's start as LangSmith's tracer receives it."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        """A Runnable's run (``_call_with_config`` starts a chain run of a run_type)."""
        self.started.append(kwargs)

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        """A run that failed."""
        self.errors.append(error)


async def test_callbacks_see_an_llm_run_with_the_provider(
    decisions: SynaptorouteDecisions,
) -> None:
    runs = Runs()
    decisions.invoke(ask("I was charged twice"), {"callbacks": [runs]})
    await decisions.ainvoke(ask("I was charged twice"), {"callbacks": [runs]})
    assert [run["name"] for run in runs.started] == ["SynaptorouteDecisions"] * 2
    for run in runs.started:
        assert run["run_type"] == "llm"
        assert run["metadata"]["ls_provider"] == "synaptoroute"
        assert run["metadata"]["ls_model_name"] == decisions.model
    with pytest.raises(UnsupportedQuestionError):
        decisions.invoke(ask("hi", q=Noul(instructions="?")), {"callbacks": [runs]})
    assert isinstance(runs.errors[-1], UnsupportedQuestionError)


# -- end to end: LangChain's ModelRouterMiddleware ---------------------------------------


def _agent(decisions: SynaptorouteDecisions) -> Any:
    pytest.importorskip("langchain.agents.middleware.model_router")
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelChoice, ModelRouterMiddleware

    def model(text: str) -> GenericFakeChatModel:
        return GenericFakeChatModel(messages=iter([AIMessage(text)] * 2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the middleware is a beta API upstream
        router = ModelRouterMiddleware(
            choices={
                "fast": ModelChoice(
                    model=model("fast answer"), criteria="Greetings and simple small talk."
                ),
                "powerful": ModelChoice(
                    model=model("powerful answer"),
                    criteria="Complex reasoning, mathematical proofs and code analysis.",
                ),
            },
            instructions="Choose the least costly model suited to the task.",
            classifier=decisions,
        )
    return create_agent(model("default model answer"), middleware=[router])


async def test_model_router_middleware_routes_an_agent(decisions: SynaptorouteDecisions) -> None:
    agent = _agent(decisions)
    hello = agent.invoke({"messages": [HumanMessage("hi, how are you?")]})
    assert hello["messages"][-1].content == "fast answer"
    assert hello["model_route"].choice == "fast"
    proof = await agent.ainvoke(
        {"messages": [HumanMessage("Prove that this sorting algorithm terminates")]}
    )
    assert proof["messages"][-1].content == "powerful answer"
    assert proof["model_route"].choice == "powerful"
    assert set(proof["model_route"].probabilities) == {"fast", "powerful"}


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain.agents.middleware.model_router")
    page = (Path(__file__).resolve().parents[4] / "docs" / "langchain.md").read_text("utf-8")
    (block,) = [
        b
        for b in re.findall(r"^```python\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
        if "SynaptorouteDecisions(" in b and "print(" in b
    ]
    exec(compile(block, "docs/langchain.md", "exec"), {})
    shown = re.findall(r"^# (\S.*)$", block, re.MULTILINE)
    assert capsys.readouterr().out.splitlines() == shown

"""A RunnableBranch over hand-written conditions and its SynaptorouteRouter replacement."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import (
    Runnable,
    RunnableBranch,
    RunnableLambda,
    RunnablePassthrough,
)
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import Encoder


def _answer(topic: str) -> Runnable[Any, str]:
    prompt = ChatPromptTemplate.from_messages(
        [("system", f"You answer {topic} questions."), ("human", "{question}")]
    )
    model = FakeListChatModel(responses=[f"[{topic}]"])
    # The output names the branch and echoes the question, so it differs per input.
    reply = RunnablePassthrough.assign(answer=prompt | model | StrOutputParser())
    return reply | RunnableLambda(lambda d: f"{d['answer']} {d['question']}")


BILLING, TECH, GENERAL = _answer("billing"), _answer("tech"), _answer("general")


def _mentions(*words: str) -> Any:
    return lambda x: any(w in x["question"].lower() for w in words)


# What people write today: keyword conditions, first match wins.
BRANCH = RunnableBranch(
    (_mentions("refund", "charged", "invoice", "bill"), BILLING),
    (_mentions("password", "log in", "login", "crash"), TECH),
    GENERAL,
)

QUESTIONS = [
    "I want a refund for my order",
    "Why was I charged twice?",
    "Can you send me the invoice for March?",
    "I forgot my password",
    "I can't log in to my account",
    "The app crashes when I open it",
    "What are your opening hours?",
    "Do you ship to Canada?",
]


def test_same_outputs_as_the_runnable_branch(encoder: Encoder) -> None:
    router = SynaptorouteRouter.from_branches(
        {
            "billing": (
                ["I need a refund", "I was charged twice", "Where is my invoice?"],
                BILLING,
            ),
            "tech": (["I can't log in", "Reset my password", "The app crashes on start"], TECH),
        },
        default=GENERAL,
        input_key="question",
        encoder=encoder,
    )
    inputs = [{"question": q} for q in QUESTIONS]
    expected = [BRANCH.invoke(x) for x in inputs]
    topics = ["billing"] * 3 + ["tech"] * 3 + ["general"] * 2
    assert expected == [f"[{t}] {q}" for t, q in zip(topics, QUESTIONS, strict=True)]
    assert [router.invoke(x) for x in inputs] == expected
    assert router.batch(inputs) == BRANCH.batch(inputs)
    # Where keyword conditions fail, the semantic router still routes by meaning.
    paraphrase = {"question": "How do I get my money back?"}
    assert BRANCH.invoke(paraphrase).startswith("[general]")
    assert router.invoke(paraphrase).startswith("[billing]")

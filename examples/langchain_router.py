"""Route between LangChain chains by example utterances, with no LLM call to decide.

Runs offline: the chains end in LangChain's fake chat model, so no API key is needed;
swap in ``ChatOpenAI(...)`` or any chat model and nothing else changes.

Run: pip install -e . -e integrations/langchain && python examples/langchain_router.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_synaptoroute import SynaptorouteRouter


def expert(role: str, reply: str) -> Runnable[Any, str]:
    """A prompt, a chat model and a parser: what each route would run in a real app."""
    prompt = ChatPromptTemplate.from_messages([("system", role), ("human", "{question}")])
    return prompt | FakeListChatModel(responses=[reply]) | StrOutputParser()


router = SynaptorouteRouter.from_branches(
    {
        "billing": (
            ["I need a refund", "I was charged twice", "Where is my invoice?"],
            expert("You handle billing.", "Billing here: I've opened a refund request."),
        ),
        "tech": (
            ["The app crashes on start", "I can't log in", "Reset my password"],
            expert("You fix technical problems.", "Tech support: try signing out and in."),
        ),
    },
    # Inputs that match no route: here a general assistant (or an LLM classifier).
    default=expert("You are a general assistant.", "I can help with billing or tech issues."),
    input_key="question",
)

QUESTIONS = [
    "How do I get my money back?",
    "my password doesn't work anymore",
    "What are your opening hours?",
]


def main() -> None:
    """Invoke, batch, stream and classify; print each decision and answer."""
    classifier = router.as_classifier()
    router.invoke({"question": "warm-up"})  # loads the model once
    print(f"{'question':36} {'route':8} {'score':>5} {'ms':>6}  answer")
    for question in QUESTIONS:
        start = time.perf_counter()
        answer = router.invoke({"question": question})
        ms = (time.perf_counter() - start) * 1000
        match = classifier.invoke({"question": question})
        print(f"{question:36} {match.name or '-':8} {match.score:5.2f} {ms:6.1f}  {answer}")

    # One encoder call for all inputs, then one batch per chosen chain.
    answers = router.batch([{"question": q} for q in QUESTIONS])
    print("batch:", answers)

    # The chosen chain's chunks stream through as they are produced.
    chunks = list(router.stream({"question": "the app crashes when I open it"}))
    print(f"stream: {len(chunks)} chunks -> {''.join(chunks)!r}")

    # Async calls go through synaptoroute's batching worker, off the event loop.
    print("ainvoke:", asyncio.run(router.ainvoke({"question": "I was billed twice"})))


if __name__ == "__main__":
    main()

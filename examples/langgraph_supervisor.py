"""A LangGraph supervisor that dispatches to three agents with no LLM call to decide.

The supervisor node is a ``SynaptorouteNode``: it embeds the user's last message
locally, picks the agent whose example utterances it matches, writes the decision into
the graph state (so the checkpointer keeps it) and jumps there with ``Command``.
Messages that match no agent go to a fallback node. Runs offline in a few seconds:
the agents are LangChain's fake chat model; swap in any chat model and nothing else
changes.

Run: pip install -e . -e "integrations/langchain[langgraph]" && python examples/langgraph_supervisor.py
"""

from __future__ import annotations

import asyncio
from itertools import cycle
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable
from langchain_synaptoroute.langgraph import RouteDecision, SynaptorouteNode
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from synaptoroute import AdaptiveRouter, Route

#: Each agent's example utterances, its system prompt and its (fake) reply.
AGENTS: dict[str, tuple[list[str], str, str]] = {
    "billing": (
        ["I need a refund", "I was charged twice", "Where is my invoice?", "Cancel my plan"],
        "You handle billing.",
        "Billing agent: I've opened a refund request.",
    ),
    "tech": (
        ["The app crashes on start", "I can't log in", "Reset my password", "I see an error"],
        "You fix technical problems.",
        "Tech agent: try signing out and back in.",
    ),
    "smalltalk": (
        ["Hi there!", "How are you today?", "Tell me a joke", "Good morning"],
        "You chat kindly.",
        "Smalltalk agent: all good here, thanks for asking!",
    ),
}
FALLBACK_REPLY = "Fallback: I can help with billing, technical problems or a chat."

QUESTIONS = [
    "How do I get my money back?",
    "my password doesn't work anymore",
    "hello, how's it going?",
    "What is the boiling point of mercury?",
]


class SupervisorState(MessagesState):
    """The conversation, plus the supervisor's last decision (plain JSON values)."""

    route: RouteDecision


def agent(system: str, reply: str) -> Runnable[Any, dict[str, Any]]:
    """A prompt over the conversation and a chat model: one agent node."""
    prompt = ChatPromptTemplate.from_messages([("system", system), MessagesPlaceholder("messages")])
    model = GenericFakeChatModel(messages=cycle([AIMessage(reply)]))
    return prompt | model | (lambda message: {"messages": [message]})


def fallback(state: SupervisorState) -> dict[str, Any]:
    """Answers what no agent covers."""
    return {"messages": [AIMessage(FALLBACK_REPLY)]}


def build_router() -> AdaptiveRouter:
    """The router: one route per agent, on the bundled local model."""
    router = AdaptiveRouter()
    router.add_routes(Route(name=name, utterances=utts) for name, (utts, _, _) in AGENTS.items())
    return router


def build_supervisor(
    router: AdaptiveRouter,
) -> tuple[CompiledStateGraph[Any, Any, Any, Any], SynaptorouteNode]:
    """The compiled graph (with an in-memory checkpointer) and its supervisor node."""
    supervisor = SynaptorouteNode(router, default="fallback")
    return build_graph(supervisor, supervisor.destinations), supervisor


def build_graph(
    supervisor: Any, destinations: tuple[str, ...]
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph around any ``supervisor`` node going to ``destinations``."""
    graph = StateGraph(SupervisorState)
    # destinations= gives get_graph() one edge per agent (the node jumps with Command).
    graph.add_node("supervisor", supervisor, destinations=destinations)
    graph.add_edge(START, "supervisor")
    for name, (_, system, reply) in AGENTS.items():
        graph.add_node(name, agent(system, reply))
        graph.add_edge(name, END)
    graph.add_node("fallback", fallback)
    graph.add_edge("fallback", END)
    return graph.compile(checkpointer=InMemorySaver())


def show(question: str, state: dict[str, Any]) -> None:
    """One line per question: the decision and the agent's answer."""
    decision = state["route"]
    print(
        f"{question!r:42} -> {decision['node']:9} (route={decision['route']}, "
        f"score={decision['score']:.2f}): {state['messages'][-1].text}"
    )


async def ask_concurrently(app: CompiledStateGraph[Any, Any, Any, Any]) -> None:
    """``ainvoke`` every question at once: the supervisor awaits the batching worker."""
    configs: list[Any] = [{"configurable": {"thread_id": f"async-{i}"}} for i in range(4)]
    states = await asyncio.gather(
        *(
            app.ainvoke({"messages": [("user", q)]}, c)
            for q, c in zip(QUESTIONS, configs, strict=True)
        )
    )
    print("async:", ", ".join(s["route"]["node"] for s in states))


def main() -> None:
    """Route each question synchronously, then all at once asynchronously."""
    router = build_router()
    app, _ = build_supervisor(router)
    edges = sorted(e.target for e in app.get_graph().edges if e.source == "supervisor")
    print("supervisor ->", ", ".join(edges))
    for i, question in enumerate(QUESTIONS):
        config: Any = {"configurable": {"thread_id": f"sync-{i}"}}
        show(question, app.invoke({"messages": [("user", question)]}, config))
    saved = app.get_state({"configurable": {"thread_id": "sync-0"}}).values["route"]
    print("checkpointed decision of sync-0:", saved["route"], saved["reason"])
    asyncio.run(ask_concurrently(app))


if __name__ == "__main__":
    main()

"""What text the router reads from each kind of input, and that the branch gets the input."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_synaptoroute import SynaptorouteRouter

from synaptoroute import AdaptiveRouter, InvalidInputError


def _echo(branch: str) -> RunnableLambda[Any, tuple[str, Any]]:
    return RunnableLambda(lambda x: (branch, x))


def _echo_router(adaptive_router: AdaptiveRouter, **options: Any) -> SynaptorouteRouter[Any, Any]:
    """Every branch returns ``(branch, the input object it received)``."""
    return SynaptorouteRouter(
        router=adaptive_router,
        runnables={name: _echo(name) for name in adaptive_router.route_names},
        default=_echo("default"),
        **options,
    )


def test_str_is_routed_as_is(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router)
    assert router.text_of("  I need a refund ") == "  I need a refund "
    assert router.invoke("How do I get my money back?") == (
        "billing",
        "How do I get my money back?",
    )


def test_dict_is_read_at_input_key_and_passed_on_unchanged(
    adaptive_router: AdaptiveRouter,
) -> None:
    payload = {"input": "my password doesn't work anymore", "user": 7}
    branch, received = _echo_router(adaptive_router).invoke(payload)
    assert branch == "tech"
    assert received is payload

    custom = _echo_router(adaptive_router, input_key="question")
    assert custom.invoke({"question": "I want a refund for my order"})[0] == "billing"


def test_missing_key_names_the_keys_and_the_options(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router, input_key="question")
    with pytest.raises(InvalidInputError, match=r"no key 'question' \(keys: 'query', 'n'\)"):
        router.invoke({"query": "hi", "n": 1})


def test_text_extractor_overrides_input_key(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router, text_extractor=lambda x: x["ticket"]["body"])
    ticket = {"ticket": {"body": "the app keeps crashing", "id": 3}}
    assert router.invoke(ticket) == ("tech", ticket)

    wrong = _echo_router(adaptive_router, text_extractor=lambda x: 42)
    with pytest.raises(TypeError, match="text_extractor must return a str, got int"):
        wrong.invoke("anything")


def test_chat_messages_route_on_the_last_human_message(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router)
    messages = [
        SystemMessage("You are a helpful assistant."),
        HumanMessage("Hi there!"),
        AIMessage("Hello! How can I help?"),
        HumanMessage("I was charged twice this month"),
        AIMessage("Let me check."),
    ]
    assert router.text_of(messages) == "I was charged twice this month"
    branch, received = router.invoke(messages)
    assert branch == "billing"
    assert received is messages


def test_a_chat_message_with_the_user_role_is_a_human_message(
    adaptive_router: AdaptiveRouter,
) -> None:
    # Chat models send ChatMessage(role="user") as the user's; it was skipped (its
    # type is "chat"), so the router routed an older message, or refused the list.
    router = _echo_router(adaptive_router)
    messages = [HumanMessage("Hi there!"), ChatMessage(role="user", content="I was charged twice")]
    assert router.text_of(messages) == "I was charged twice"
    assert router.text_of([ChatMessage(role="human", content="refund")]) == "refund"
    with pytest.raises(InvalidInputError, match="no human message"):
        router.text_of([ChatMessage(role="critic", content="I was charged twice")])


def test_message_like_tuples_dicts_and_nested_keys(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router, input_key="messages")
    tuples = [("system", "be brief"), ("human", "Reset my password please")]
    assert router.text_of(tuples) == "Reset my password please"
    dicts = [{"role": "user", "content": "tell me something funny"}]
    assert router.text_of(dicts) == "tell me something funny"
    state = {"messages": [HumanMessage("I want a refund for my order")]}
    assert router.invoke(state) == ("billing", state)


def test_one_message_dict_is_read_as_a_message(adaptive_router: AdaptiveRouter) -> None:
    # As one message object is: routed on its text, whatever its role. It raised
    # "the input dict has no key 'input'".
    router = _echo_router(adaptive_router)
    message = {"role": "user", "content": "I was charged twice this month"}
    assert router.invoke(message) == ("billing", message)
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Reset it here."}]}
    assert router.text_of(answer) == "Reset it here."
    assert router.text_of({"type": "human", "content": "hello"}) == "hello"
    # The dict's input_key wins: an input dict that also has these keys is read there.
    both = {"input": "Reset my password", "role": "user", "content": "refund"}
    assert router.text_of(both) == "Reset my password"
    # An application's own dict, with no message role, stays an input dict.
    for own in ({"type": "question", "content": "refund"}, {"content": "no role, no type"}):
        with pytest.raises(InvalidInputError, match="no key 'input'"):
            router.text_of(own)


def test_a_lone_tuple_is_read_as_langchain_reads_it(adaptive_router: AdaptiveRouter) -> None:
    # LangChain reads a chat model's tuple input as a sequence of messages, each str a
    # human message; the router does the same. One role tuple goes in a list.
    router = _echo_router(adaptive_router)
    assert router.text_of(("Good morning", "I need a refund")) == "I need a refund"
    with pytest.raises(InvalidInputError, match="no human message"):
        router.invoke([("ai", "I need a refund")])


def test_prompt_values_and_single_messages(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router)
    prompt = ChatPromptTemplate.from_messages([("system", "billing desk"), ("human", "{q}")])
    value = prompt.invoke({"q": "Where is my invoice?"})
    assert router.text_of(value) == "Where is my invoice?"
    assert router.invoke(value)[0] == "billing"
    assert router.text_of(HumanMessage([{"type": "text", "text": "hello"}])) == "hello"


def test_messages_without_a_human_message(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router)
    with pytest.raises(InvalidInputError, match="no human message"):
        router.invoke([SystemMessage("only a system prompt")])


def test_text_blocks_are_read_as_separate_words(adaptive_router: AdaptiveRouter) -> None:
    # LangChain's message.text joins text blocks with nothing between them: "will it
    # raintomorrow in Oslo?" scored 0.57 where the words score 0.81. Images add nothing.
    router = _echo_router(adaptive_router)
    message = HumanMessage(
        [
            {"type": "text", "text": "my password"},
            {"type": "image", "url": "https://example.com/screen.png"},
            {"type": "text", "text": "doesn't work"},
        ]
    )
    assert router.text_of(message) == "my password\ndoesn't work"
    assert router.text_of([message]) == "my password\ndoesn't work"
    assert router.text_of({"input": [message]}) == "my password\ndoesn't work"


def test_messages_the_harness_added_are_not_the_users(adaptive_router: AdaptiveRouter) -> None:
    # SummarizationMiddleware's summary and add_notification_metadata's updates are
    # human messages the user did not type (marked additional_kwargs["lc_source"]): the
    # router followed them instead of the user's request.
    router = _echo_router(adaptive_router)
    update = HumanMessage(
        "Background task finished: your refund was issued.",
        additional_kwargs={"lc_source": "async_subagent"},
    )
    messages = [HumanMessage("my password doesn't work anymore"), AIMessage("On it."), update]
    assert router.text_of(messages) == "my password doesn't work anymore"
    assert router.invoke(messages)[0] == "tech"
    summary = HumanMessage("Summary: a refund", additional_kwargs={"lc_source": "summarization"})
    with pytest.raises(InvalidInputError, match="no human message"):
        router.invoke([summary])
    # One message given on its own is routed, whoever added it.
    assert router.text_of(update) == update.content


def test_unsupported_inputs_raise_type_error(adaptive_router: AdaptiveRouter) -> None:
    router = _echo_router(adaptive_router)
    with pytest.raises(TypeError, match="cannot route an input of type int"):
        router.invoke(3)
    with pytest.raises(TypeError, match="as chat messages"):
        router.invoke([object()])

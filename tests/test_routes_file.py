"""Routes files: what a YAML or JSON document may hold, and how a bad one is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from synaptoroute import InvalidInputError
from synaptoroute.routes_file import load_routes_file, parse_routes, render_routes

pytest.importorskip("yaml")

ROUTE = "routes:\n  - name: billing\n    utterances: [refund]\n"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2024-02-30", "day is out of range for month"),  # PyYAML builds a date of it
        ("1" * 5000, "a number too long to read"),  # over Python's int() digit limit
    ],
)
def test_a_yaml_value_that_cannot_be_built_is_a_yaml_error_with_its_line(
    value: str, problem: str
) -> None:
    # PyYAML raised a bare ValueError, reported as "r.yaml: not valid JSON: ...".
    text = f"{ROUTE}    metadata: {{when: {value}}}\n"
    with pytest.raises(InvalidInputError) as info:
        parse_routes(text, "yaml", source="r.yaml")
    message = str(info.value)
    assert message.startswith("r.yaml: not valid YAML: ")
    assert "JSON" not in message
    assert problem in message
    assert "(line 4, column " in message
    assert len(message) < 400  # one line, not the 5000 digits


def test_a_key_repeated_in_a_yaml_mapping_is_refused_with_its_line(tmp_path: Path) -> None:
    # The second "utterances" replaced the first: "will it rain" was silently dropped.
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  - name: weather\n    utterances: [will it rain]\n    utterances: [sunny]\n"
    )
    with pytest.raises(InvalidInputError) as info:
        load_routes_file(path)
    message = str(info.value)
    assert "not valid YAML" in message
    assert "'utterances' more than once" in message
    assert "(line 4, column 5)" in message
    # At the top level too, where a second "routes" dropped every route of the first.
    with pytest.raises(InvalidInputError, match=r"'routes' more than once .*\(line 4,"):
        parse_routes(f"{ROUTE}routes:\n  - name: x\n    utterances: [y]\n", "yaml")
    # Equal keys written differently are the same key.
    with pytest.raises(InvalidInputError, match="'a' more than once"):
        parse_routes(f"{ROUTE}    metadata: {{a: 1, 'a': 2}}\n", "yaml")


def test_a_key_repeated_in_a_json_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    path.write_text(
        '{"routes": [{"name": "weather", "utterances": ["will it rain"], "utterances": ["sunny"]}]}'
    )
    with pytest.raises(InvalidInputError) as info:
        load_routes_file(path)
    assert str(info.value) == (
        f"{path}: not valid JSON: key 'utterances' appears more than once in one object"
    )


def test_distinct_keys_and_plain_documents_still_load() -> None:
    doc = parse_routes(
        f"threshold: 0.5\n{ROUTE}    metadata: {{a: 1, b: {{a: 2}}}}\nnegatives: [hi]\n", "yaml"
    )
    assert doc.routes[0].metadata == {"a": 1, "b": {"a": 2}}
    json_doc = parse_routes(
        '{"routes": [{"name": "b", "utterances": ["x"], "metadata": {"a": {"a": 1}}}]}', "json"
    )
    assert json_doc.routes[0].metadata == {"a": {"a": 1}}


def test_yaml_aliases_are_bounded_not_refused() -> None:
    # Nested aliases expand exponentially (a "billion laughs" file of a few hundred
    # bytes held gigabytes): refused past a budget. Ordinary anchors, aliases and merge
    # keys (0.2 read them) still load.
    text = (
        "routes:\n  - name: billing\n    utterances: &u [refund]\n"
        "    metadata: &team {owner: payments}\n"
        "  - name: other\n    utterances: *u\n    metadata: {<<: *team, tier: gold}\n"
    )
    doc = parse_routes(text, "yaml", source="r.yaml")
    assert [(r.name, r.utterances, r.metadata) for r in doc.routes] == [
        ("billing", ["refund"], {"owner": "payments"}),
        ("other", ["refund"], {"owner": "payments", "tier": "gold"}),
    ]
    laughs = "".join(f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    bomb = f"{ROUTE}    metadata:\n      a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n{laughs}"
    with pytest.raises(InvalidInputError, match="aliases expand to more than 100,000") as info:
        parse_routes(bomb, "yaml")
    assert "(line " in str(info.value)


def test_libyaml_reads_yaml_and_pyyaml_decides_what_it_refuses() -> None:
    # PyYAML's own parser read about 0.5 MB/s (a 100k-route file took minutes at
    # `serve --routes`); libyaml's reads it several times faster (benchmarks/routes_file.py).
    yaml = pytest.importorskip("yaml")
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML has no libyaml")
    # A tab after a colon: YAML allows it, PyYAML's own parser alone refused it.
    tabbed = parse_routes("routes:\n  - name:\tbilling\n    utterances: [refund]\n")
    assert tabbed.routes[0].name == "billing"
    # What libyaml refuses, PyYAML's parser reads as before: no file that loaded fails now.
    flow = parse_routes("routes: [{name: billing, utterances:[refund]}]\n")
    assert flow.routes[0].utterances == ["refund"]
    # Where the two parsers read a value differently, PyYAML's reading stands: an empty
    # value tagged "!" is None (libyaml: ""), a byte-order mark inside the text is kept.
    assert parse_routes(f"threshold: !\n{ROUTE}").threshold is None
    marked = parse_routes(f"{ROUTE}    metadata: {{k: \ufeffv}}\n")
    assert marked.routes[0].metadata == {"k": "\ufeffv"}
    # libyaml takes no lone surrogate: PyYAML's refusal, not a UnicodeEncodeError.
    with pytest.raises(InvalidInputError, match="special characters are not allowed"):
        parse_routes(f"{ROUTE}    metadata: {{a: \ud800}}\n", source="r.yaml")
    # The checks (aliases, depth, repeated keys) run once, on libyaml's parse: a file
    # they refuse was parsed again by PyYAML's parser (seven times slower), which
    # reached the same refusal in other words (or hit Python's recursion limit).
    from synaptoroute import routes_file

    parsers: list[bool] = []
    loader = routes_file._yaml_loader

    def counted(*, fast: bool) -> object:
        parsers.append(fast)
        return loader(fast=fast)

    laughs = "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    refused = [
        (f"a0: &a0 [x, x]\n{laughs}", "aliases expand"),
        ("routes: " + "[" * 300 + "]" * 300, "it nests too deeply \\(more than 256 levels\\)"),
        (f"{ROUTE}routes: []\n", "found key 'routes' more than once"),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routes_file, "_yaml_loader", counted)
        for text, match in refused:
            with pytest.raises(InvalidInputError, match=match):
                parse_routes(text)
    assert parsers == [True] * len(refused)


def test_a_yaml_word_read_as_no_text_says_what_yaml_read() -> None:
    # "Input should be a valid string" left a user looking at `- yes` in the file.
    text = (
        "routes:\n"
        "  - name: confirm\n"
        "    utterances: [yes, sure, 2024-01-01]\n"
        "  - name: 12\n"
        "    utterances: [x]\n"
    )
    with pytest.raises(InvalidInputError) as caught:
        parse_routes(text)
    message = str(caught.value)
    assert (
        "routes.0.utterances.0: Input should be a valid string (read as bool True: put the text in quotes)"
        in message
    )
    assert (
        "routes.0.utterances.2: Input should be a valid string (read as date 2024-01-01: "
        in message
    )
    assert "routes.1.name: Input should be a valid string (read as int 12: " in message
    assert "sure" not in message  # what was read as text is not repeated
    # What export writes reads back as the same text.
    doc = {"routes": [{"name": "12", "utterances": ["yes", "no", "on", "2024-01-01"]}]}
    again = parse_routes(render_routes(doc, "yaml"))
    assert again.routes[0].name == "12"
    assert again.routes[0].utterances == ["yes", "no", "on", "2024-01-01"]


def test_a_yaml_binary_value_is_not_text() -> None:
    # Pydantic's lax mode took the bytes as their UTF-8 text: "!!binary aGVsbG8=" was
    # stored as the utterance "hello", and a route name or negative so too.
    for text in [
        "routes:\n  - name: greet\n    utterances: [!!binary aGVsbG8=]\n",
        "routes:\n  - name: !!binary Z3JlZXQ=\n    utterances: [hello]\n",
        "routes:\n  - name: greet\n    description: !!binary aGk=\n    utterances: [hello]\n",
        "negatives: [!!binary aGVsbG8=]\n",
    ]:
        with pytest.raises(InvalidInputError, match=r"valid string \(read as binary data"):
            parse_routes(text)


def test_a_json_number_too_long_to_read_is_said_so() -> None:
    with pytest.raises(InvalidInputError, match=r"not valid JSON: a number too long to read$"):
        parse_routes('{"routes": [], "threshold": ' + "9" * 5000 + "}", "json")


def test_a_yaml_number_too_long_to_read_is_said_so() -> None:
    # Python's own message advised sys.set_int_max_str_digits(), as JSON's did.
    with pytest.raises(InvalidInputError, match="a number too long to read") as caught:
        parse_routes("routes: []\nthreshold: " + "9" * 5000 + "\n", "yaml")
    assert "set_int_max_str_digits" not in str(caught.value)
    assert "line 2" in str(caught.value)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_json_threshold_that_is_not_finite_is_said_so(value: str) -> None:
    # Python's json reads these words; NaN was refused as "less than or equal to 1".
    text = '{"routes": [{"name": "a", "utterances": ["x"], "threshold": ' + value + "}]}"
    with pytest.raises(InvalidInputError, match=r"routes\.0\.threshold: Input should be a finite"):
        parse_routes(text, "json")

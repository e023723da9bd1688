"""JSON-lines loading: valid files, and malformed lines reported by line number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synaptoroute import AdaptiveRouter, HashingEncoder, InvalidInputError, Route
from synaptoroute.datasets import DatasetError, load_jsonl
from synaptoroute.fitting import routes_from_labelled

FIXTURES = Path(__file__).parent / "fixtures"


def write(tmp_path: Path, content: bytes | str) -> Path:
    path = tmp_path / "data.jsonl"
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_loads_texts_and_labels_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '\ufeff{"text": "I need a refund", "label": "billing", "id": 7}\n'
        "\n"
        '{"text": "what is the weather", "label": null}\n'
        '   \n{"text": "crash", "label": " support "}',
    )
    texts, labels = load_jsonl(path)
    assert texts == ["I need a refund", "what is the weather", "crash"]
    assert labels == ["billing", None, "support"]


def test_loads_the_fixture_slice() -> None:
    texts, labels = load_jsonl(FIXTURES / "clinc150_val_slice.jsonl")
    assert len(texts) == len(labels) == 440
    assert labels.count(None) == 40


def test_malformed_lines_are_reported_by_number(tmp_path: Path) -> None:
    lines = [
        b'{"text": "fine", "label": "a"}',  # 1
        b'{"text": "no closing brace", "label": "a"',  # 2
        b'["text", "label"]',  # 3
        b'{"label": "a"}',  # 4
        b'{"text": "no label"}',  # 5
        b'{"text": 42, "label": "a"}',  # 6
        b'{"text": "  ", "label": "a"}',  # 7
        b'{"text": "x", "label": 3}',  # 8
        b'{"text": "x", "label": ""}',  # 9
        b'{"text": "caf\xe9", "label": "a"}',  # 10: Latin-1, not UTF-8
        b'{"text": "also fine", "label": null}',  # 11
    ]
    path = write(tmp_path, b"\n".join(lines) + b"\n")
    with pytest.raises(DatasetError) as caught:
        load_jsonl(path)
    err = caught.value
    assert isinstance(err, InvalidInputError) and isinstance(err, ValueError)
    assert [n for n, _ in err.errors] == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    problems = dict(err.errors)
    # At the end of the line cut short, not "column 1" (of the next, for the decoder).
    assert problems[2] == f"invalid JSON (Expecting ',' delimiter at column {len(lines[1]) + 1})"
    assert "JSON object" in problems[3]
    assert "'text'" in problems[4]
    assert "'label'" in problems[5] and "null" in problems[5]
    assert "string" in problems[6]
    assert "empty" in problems[7]
    assert "string or null" in problems[8]
    assert "empty" in problems[9]
    assert "UTF-8" in problems[10]
    message = str(err)
    assert str(path) in message and "9 malformed lines" in message
    assert "line 2:" in message and "line 10:" in message
    assert "and 0 more" not in message


def test_many_errors_are_summarised(tmp_path: Path) -> None:
    path = write(tmp_path, "not json\n" * 25)
    with pytest.raises(DatasetError, match=r"25 malformed lines: line 1: .*; and 15 more"):
        load_jsonl(path)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no labelled rows"):
        load_jsonl(write(tmp_path, "\n\n"))
    with pytest.raises(FileNotFoundError):
        load_jsonl(tmp_path / "absent.jsonl")


def test_labelled_row_helpers_live_with_the_datasets_and_keep_their_old_homes() -> None:
    from synaptoroute import evaluation, fitting
    from synaptoroute.datasets import NONE, label_indexes, routes_from_labelled

    routes = routes_from_labelled(["refund", "crash", "joke", "refund"], ["b", "t", None, "b"])
    assert [(r.name, r.utterances) for r in routes] == [("b", ["refund"]), ("t", ["crash"])]
    assert label_indexes(["t", None, "b"], ["b", "t"]).tolist() == [1, NONE, 0]
    assert fitting.routes_from_labelled is routes_from_labelled  # 0.2.0 import path
    assert evaluation.label_indexes is label_indexes


def test_fit_and_evaluate_take_numpy_arrays_of_texts() -> None:
    # np.array(texts) failed inside the check ("truth value of an array ... is
    # ambiguous") where query_batch and numpy labels worked.
    texts = ["I need a refund", "refund my money", "the app crashes", "cannot log in"] * 3
    labels = ["billing", "billing", "tech", "tech"] * 3
    router = AdaptiveRouter(HashingEncoder(dimension=64))
    router.add_routes(routes_from_labelled(np.array(texts), np.array(labels, dtype=object)))
    report = router.evaluate(np.array(texts), np.array(labels, dtype=object))
    assert report.figures.accuracy == 1.0
    assert router.fit(np.array(texts), np.array(labels, dtype=object), folds=2).decision
    with pytest.raises(InvalidInputError, match="no labelled rows"):
        router.evaluate(np.array([], dtype=str), np.array([], dtype=object))


def test_a_label_naming_a_route_without_utterances_says_so() -> None:
    # Such a route is in no index snapshot, and the error said it was no route of the
    # router and to add it first: it was there.
    router = AdaptiveRouter(HashingEncoder())
    router.add_routes(routes_from_labelled(["a refund please", "money back"], ["billing"] * 2))
    router.add_route(Route(name="support"))  # no utterances
    with pytest.raises(InvalidInputError) as info:
        router.fit(["my app crashed", "refund"], ["support", "billing"])
    message = str(info.value)
    assert "'support' (at index 0) name a route with no utterances" in message
    assert "no route of this router" not in message
    # An unknown label next to it is still named as such, in the same message.
    with pytest.raises(InvalidInputError) as info:
        router.fit(["my app crashed", "hi"], ["support", "greet"])
    message = str(info.value)
    assert "1 labels: 'support' (at index 0) name a route with no utterances" in message
    assert "1 labels: 'greet' (at index 1) name no route of this router" in message

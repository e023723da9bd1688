"""synaptoroute.testing: the recording encoder that the core's and the integrations' tests share."""

from __future__ import annotations

import doctest
import threading

import numpy as np
import pytest

import synaptoroute.testing
from synaptoroute import EncoderError, HashingEncoder
from synaptoroute.testing import GatedEncoder, RecordingEncoder


def test_the_docstring_example_runs() -> None:
    result = doctest.testmod(synaptoroute.testing)
    assert result.attempted > 0 and result.failed == 0


def test_it_records_calls_texts_and_threads_and_changes_no_vector() -> None:
    inner = HashingEncoder(32)
    recording = RecordingEncoder(inner)
    assert (recording.model_id, recording.dimension) == (inner.model_id, 32)
    texts = ["a refund please", "the app crashes"]
    assert np.array_equal(recording.encode(texts), inner.encode(texts))

    def other() -> None:
        recording.encode(["from a thread"])

    worker = threading.Thread(target=other, name="recorded-worker")
    worker.start()
    worker.join()
    assert recording.calls == [texts, ["from a thread"]]
    assert recording.texts_encoded == 3
    assert recording.threads == [threading.get_ident(), worker.ident]
    assert recording.thread_names == [threading.current_thread().name, "recorded-worker"]
    recording.clear()
    assert (recording.calls, recording.threads, recording.thread_names) == ([], [], [])


def test_it_reads_an_iterator_once_and_records_no_refused_call() -> None:
    # The iterator was read into the record, and the wrapped encoder got it empty:
    # zero rows for two texts. A str, refused by the wrapped encoder, was recorded.
    inner = HashingEncoder(dimension=8)
    recording = RecordingEncoder(inner)
    got = recording.encode(t for t in ["a b", "c d"])
    np.testing.assert_array_equal(got, inner.encode(["a b", "c d"]))
    assert recording.calls == [["a b", "c d"]] and recording.texts_encoded == 2
    with pytest.raises(TypeError):  # the wrapped encoder refuses a str
        recording.encode("abc")
    assert recording.calls == [["a b", "c d"]]


def test_the_gated_encoder_holds_calls_until_opened() -> None:
    inner = HashingEncoder(8)
    gated = GatedEncoder(inner)
    assert (gated.model_id, gated.dimension) == (inner.model_id, 8)
    got: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: got.append(gated.encode(["a refund"])))
    worker.start()
    assert gated.entered.wait(60)
    assert got == []  # held at the gate
    gated.open()
    worker.join(60)
    np.testing.assert_array_equal(got[0], inner.encode(["a refund"]))


def test_a_gate_never_opened_fails_the_call_instead_of_hanging() -> None:
    gated = GatedEncoder(HashingEncoder(8), limit=0.01)
    with pytest.raises(EncoderError, match="never opened the gate"):
        gated.encode(["x"])

"""synaptoroute.testing: the recording encoder that the core's and the integrations' tests share."""

from __future__ import annotations

import doctest
import threading

import numpy as np

import synaptoroute.testing
from synaptoroute import AdaptiveRouter, HashingEncoder, Route
from synaptoroute.testing import RecordingEncoder


def test_the_docstring_example_runs() -> None:
    assert doctest.testmod(synaptoroute.testing).failed == 0


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


def test_a_router_over_it_encodes_each_new_text_once() -> None:
    recording = RecordingEncoder(HashingEncoder())
    router = AdaptiveRouter(recording)
    router.add_route(Route(name="billing", utterances=["I need a refund"]))
    recording.clear()
    router.query_batch(["refund me", "refund me", "my refund"])
    router.query("refund me")
    assert recording.texts_encoded == 2  # the repeat and the later query came from the cache

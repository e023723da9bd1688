"""Execution providers: selection, validation, and the CPU fallback on a machine without them."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from synaptoroute import AdaptiveRouter, Encoder, InvalidInputError, Route
from synaptoroute.encoder import _available, _requested_providers

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def test_devices_map_to_providers_with_the_cpu_last() -> None:
    assert _requested_providers(None, None) == [(CPU, {})]
    assert _requested_providers("cpu", None) == [(CPU, {})]
    assert _requested_providers("cuda", None) == [(CUDA, {}), (CPU, {})]
    assert _requested_providers("GPU", None) == [(CUDA, {}), (CPU, {})]
    assert _requested_providers("cuda:1", None) == [(CUDA, {"device_id": 1}), (CPU, {})]
    assert _requested_providers(None, ["CoreMLExecutionProvider"]) == [
        ("CoreMLExecutionProvider", {}),
        (CPU, {}),
    ]
    assert _requested_providers("cuda", [(CUDA, {"device_id": 2}), CPU]) == [
        (CUDA, {"device_id": 2}),
        (CPU, {}),
    ]


@pytest.mark.parametrize(
    ("device", "providers", "message"),
    [
        ("tpu", None, "unknown device 'tpu'"),
        ("cpu:0", None, "unknown device"),
        ("cuda:x", None, "unknown device"),
        (None, [], "non-empty list"),
        (None, "CPUExecutionProvider", "non-empty list"),
        (None, [("CUDAExecutionProvider", "device_id=0")], "not an execution provider"),
    ],
)
def test_bad_devices_and_providers_are_refused_at_construction(
    device: str | None, providers: object, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Encoder(device=device, providers=providers)  # type: ignore[arg-type]


def test_missing_providers_are_dropped_with_a_warning() -> None:
    with pytest.warns(RuntimeWarning, match=r"\['CUDAExecutionProvider'\] are not available"):
        kept = _available([(CUDA, {"device_id": 0}), (CPU, {})], [CPU])
    assert kept == [CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _available([(CUDA, {"device_id": 0}), (CPU, {})], [CUDA, CPU]) == [
            (CUDA, {"device_id": 0}),
            CPU,
        ]


def test_cpu_is_the_default_device_with_cpu_batch_sizes(encoder: Encoder) -> None:
    fresh = Encoder()
    assert fresh.device == "cpu"
    assert fresh.batch_size == 32
    assert fresh.preferred_batch_size == 512
    assert encoder.providers == [CPU]
    assert AdaptiveRouter(encoder).worker.max_batch_size == 512


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="a CUDA onnxruntime is present")
def test_cuda_on_a_machine_without_it_falls_back_to_the_cpu_and_still_routes(
    encoder: Encoder,
) -> None:
    gpu = Encoder(device="cuda")
    # Before loading, the batch sizes follow the device asked for.
    assert (gpu.device, gpu.batch_size, gpu.preferred_batch_size) == ("cuda", 256, 2048)
    with pytest.warns(RuntimeWarning, match="running on the CPU instead"):
        gpu.load()
    assert gpu.providers == [CPU]
    assert gpu.device == "cpu"
    texts = ["I need a refund", "the app crashes on start"]
    assert np.allclose(gpu.encode(texts), encoder.encode(texts), atol=1e-5)
    router = AdaptiveRouter(gpu)
    router.add_route(Route(name="billing", utterances=["I need a refund", "refund my order"]))
    assert router.query("How do I get my money back?").name == "billing"


def test_an_explicit_batch_size_wins_over_the_device_default() -> None:
    assert Encoder(device="cuda", batch_size=8).batch_size == 8
    assert AdaptiveRouter(Encoder(), max_batch_size=7).worker.max_batch_size == 7

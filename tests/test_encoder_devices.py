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
    # An explicit list is kept in its order: the CPU provider is appended only when absent.
    assert _requested_providers(None, [CPU, CUDA]) == [(CPU, {}), (CUDA, {})]
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
        # A trailing colon named no device and was read as "cuda".
        ("cuda:", None, "unknown device"),
        ("cpu:", None, "unknown device"),
        (None, [], "non-empty list"),
        (None, "CPUExecutionProvider", "non-empty list"),
        (None, [("CUDAExecutionProvider", "device_id=0")], "not an execution provider"),
        # These raised AttributeError, ValueError and TypeError, undocumented.
        (5, None, "device must be a str"),
        (b"cpu", None, "device must be a str"),
        (None, [("CUDAExecutionProvider",)], "not an execution provider"),
        (None, [("CUDAExecutionProvider", {}, 0)], "not an execution provider"),
        (None, [None], "not an execution provider"),
        (None, 5, "providers must be a list"),
        # list() kept a dict's keys (its options, a device_id, were lost) and a set's
        # order is its hash's, where the order is the providers' priority.
        (None, {CUDA: {"device_id": 1}}, r"got a dict: write \{name: options\} as"),
        (None, {CUDA, CPU}, "got a set"),
    ],
)
def test_bad_devices_and_providers_are_refused_at_construction(
    device: str | None, providers: object, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Encoder(device=device, providers=providers)  # type: ignore[arg-type]


def test_providers_given_as_an_iterator_are_read_once() -> None:
    # The arguments kept for pickling read it first: the encoder saw an empty list.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CUDA missing here: on the CPU
        encoder = Encoder(providers=iter([CUDA, CPU]))
    assert [name for name, _ in encoder._requested] == [CUDA, CPU]
    assert encoder._arguments["providers"] == [CUDA, CPU]


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
    # The missing provider is known when the encoder is made: the warning comes then,
    # and the batch sizes are the CPU's, the router's worker's included.
    with pytest.warns(RuntimeWarning, match="running on the CPU instead"):
        gpu = Encoder(device="cuda")
    assert (gpu.batch_size, gpu.preferred_batch_size) == (32, 512)
    assert AdaptiveRouter(gpu).worker.max_batch_size == 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not again at load
        gpu.load()
    assert gpu.providers == [CPU]
    assert gpu.preferred_batch_size == 512
    assert gpu.device == "cpu"
    texts = ["I need a refund", "the app crashes on start"]
    assert np.allclose(gpu.encode(texts), encoder.encode(texts), atol=1e-5)
    router = AdaptiveRouter(gpu)
    router.add_route(Route(name="billing", utterances=["I need a refund", "refund my order"]))
    assert router.query("How do I get my money back?").name == "billing"


def test_an_available_accelerator_gets_its_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpu = Encoder(device="cuda")
    assert (gpu.device, gpu.batch_size, gpu.preferred_batch_size) == ("cuda", 256, 2048)
    assert AdaptiveRouter(gpu).worker.max_batch_size == 2048
    # TensorRT missing, CUDA there: the session runs on CUDA, so the sizes are CUDA's.
    with pytest.warns(RuntimeWarning, match="TensorrtExecutionProvider"):
        trt = Encoder(device="tensorrt")
    assert (trt.batch_size, trt.preferred_batch_size) == (256, 2048)
    # A list that names the CPU first runs on the CPU: passed as it is, in its order.
    cpu_first = Encoder(providers=[CPU, CUDA])
    assert (cpu_first.batch_size, cpu_first.preferred_batch_size) == (32, 512)


def test_the_azure_provider_gets_the_cpus_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime lists AzureExecutionProvider as available; it calls an endpoint and
    # computes nothing here, yet it counted as an accelerator (batches of 256 and 2048).
    azure = "AzureExecutionProvider"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [azure, CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = Encoder(providers=[azure])
    assert (encoder.batch_size, encoder.preferred_batch_size) == (32, 512)
    assert AdaptiveRouter(encoder).worker.max_batch_size == 512


def test_an_explicit_batch_size_wins_over_the_device_default() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no CUDA on this machine
        assert Encoder(device="cuda", batch_size=8).batch_size == 8
    assert AdaptiveRouter(Encoder(), max_batch_size=7).worker.max_batch_size == 7

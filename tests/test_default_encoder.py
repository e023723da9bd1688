"""One model per process: everything built without an encoder shares the bundled one."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import synaptoroute.encoder
from synaptoroute import AdaptiveRouter, Encoder, default_encoder

_SCRIPT = """
import json, resource, sys
from synaptoroute import AdaptiveRouter, Route

def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def build(i):
    router = AdaptiveRouter()
    router.add_route(Route(name=f"billing{i}", utterances=["I need a refund", "refund my order"]))
    assert router.query("How do I get my money back?").name == f"billing{i}"
    return router

routers = [build(0)]
one = rss_mb()
routers += [build(i) for i in range(1, 10)]
ten = rss_mb()
print(json.dumps({"one": one, "ten": ten, "shared": len({id(r.encoder) for r in routers}) == 1}))
"""


def test_routers_built_without_an_encoder_share_the_default() -> None:
    shared = default_encoder()
    assert isinstance(shared, Encoder)
    assert AdaptiveRouter().encoder is shared
    assert AdaptiveRouter().encoder is AdaptiveRouter().encoder
    assert Encoder() is not shared  # an explicit Encoder() keeps its own settings


def test_the_default_is_created_once_under_concurrent_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Earlier tests have made the default already: start this one without it, so the
    # threads really race to create it (the shared one is put back afterwards).
    monkeypatch.setattr(synaptoroute.encoder, "_default", None)
    seen: list[object] = []
    start = threading.Barrier(8)

    def grab() -> None:
        start.wait()
        seen.append(default_encoder())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and len({id(e) for e in seen}) == 1
    assert synaptoroute.encoder._default is seen[0]


def test_ten_default_routers_cost_about_one_model_of_memory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300, check=True
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["shared"]
    # A second loaded model costs ~100 MB; nine more routers of two utterances cost far less.
    assert figures["ten"] <= figures["one"] * 1.15, figures

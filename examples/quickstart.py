"""Route a few queries on the bundled model with a local SQLite file.

Run: bash scripts/quickstart.sh   (or: python examples/quickstart.py [--store PATH])
"""

from __future__ import annotations

import argparse
import time

from synaptoroute import AdaptiveRouter, Encoder, Route, SQLiteStorage

ROUTES = [
    Route(
        name="billing",
        utterances=["I need a refund", "Where is my receipt?", "Cancel my subscription"],
    ),
    Route(
        name="tech_support",
        utterances=["The app crashes on start", "I can't log in", "Reset my password"],
    ),
    Route(
        name="small_talk",
        utterances=["Hi there!", "How are you today?", "Tell me a joke"],
    ),
]

QUERIES = [
    "How do I get my money back?",
    "my password doesn't work anymore",
    "hello, how's it going?",
    "What is the boiling point of mercury?",
    "",
]


def main() -> None:
    """Build (or reopen) the router and print route, score and latency per query."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="data/quickstart.sqlite", help="SQLite file")
    args = parser.parse_args()

    router = AdaptiveRouter(Encoder(), SQLiteStorage(args.store))
    router.add_routes(ROUTES, replace=True)  # an unchanged route is a no-op on rerun
    router.query("warm-up")  # loads the model once
    print(f"{'query':40} {'route':14} {'score':>6} {'latency':>9}")
    for text in QUERIES:
        start = time.perf_counter()
        match = router.query(text)
        ms = (time.perf_counter() - start) * 1000
        print(f"{text!r:40} {match.name or '-':14} {match.score:6.3f} {ms:7.2f} ms")
    router.close()


if __name__ == "__main__":
    main()

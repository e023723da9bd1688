"""Reading a large YAML routes file (``serve --routes``, ``import``, ``parse_routes``):
libyaml's parser, which synaptoroute uses when PyYAML has it, beside PyYAML's own
parser (the only one before 0.3), both with synaptoroute's checks and validation.

The file is generated: ``--routes`` routes of ``--utterances`` utterances of about 45
characters each, and a little metadata per route, written by ``yaml.safe_dump``.
Each parser reads it ``--repeat`` times; the median is reported, with the ratio of
the two in the same run.

Usage::

    python benchmarks/routes_file.py [--routes 2000] [--utterances 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import yaml
from common import command_line, machine_info

from synaptoroute import routes_file
from synaptoroute.routes_file import parse_routes


def document(routes: int, utterances: int) -> str:
    """A routes file of ``routes`` routes of ``utterances`` utterances each."""
    data = {
        "routes": [
            {
                "name": f"route_{i}",
                "utterances": [
                    f"please help me with request {j} about topic {i}" for j in range(utterances)
                ],
                "metadata": {"owner": f"team-{i % 7}", "tier": i % 3},
            }
            for i in range(routes)
        ]
    }
    return str(yaml.safe_dump(data, allow_unicode=True))


def median_seconds(text: str, repeat: int) -> float:
    """The median time of ``parse_routes(text)`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        parse_routes(text, "yaml")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Time both parsers on one generated file and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=2000)
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"`{command_line('routes_file.py')}`")
    print(machine_info())
    print(f"PyYAML {yaml.__version__}, libyaml: {yaml.__with_libyaml__}")
    text = document(args.routes, args.utterances)
    fast = median_seconds(text, args.repeat)
    current = routes_file._load_yaml
    routes_file._load_yaml = functools.partial(current, fast=False)  # type: ignore[assignment]
    try:
        slow = median_seconds(text, args.repeat)
    finally:
        routes_file._load_yaml = current  # type: ignore[assignment]
    size = len(text.encode("utf-8")) / 1e6
    print()
    print(f"| {args.routes:,} routes x {args.utterances} utterances ({size:.1f} MB) | s | MB/s |")
    print("|---|---|---|")
    print(f"| libyaml's parser (now) | {fast:.3f} | {size / fast:.1f} |")
    print(f"| PyYAML's own parser, same checks (0.2's parser) | {slow:.3f} | {size / slow:.1f} |")
    print(f"| ratio | {slow / fast:.1f}x faster | |")


if __name__ == "__main__":
    main()

"""`appliance bench engine|prefix|serve|ingest|soak|fairness|tracing|peers|quality`: each prints its numbers
and a peer's."""

from __future__ import annotations

import argparse
import importlib

# name -> module exposing add_arguments(parser) and run(args) -> int
BENCHMARKS = {
    "engine": "appliance.bench.engine",
    "prefix": "appliance.bench.prefix",
    "ingest": "appliance.bench.ingest",
    "serve": "appliance.bench.serve",
    "soak": "appliance.bench.soak",
    "fairness": "appliance.bench.fairness",
    "tracing": "appliance.bench.tracing",
    "peers": "appliance.bench.peers",
    "quality": "appliance.bench.quality",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=f"run a benchmark ({', '.join(BENCHMARKS)})")
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        bp = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)
    p.set_defaults(func=lambda args: p.print_help() or 2)

"""What the coordinator's and the gateway's fuzz entry points share.

Two modes over the same harness (``bench.fuzz.harness``):

- ``--cases N --seed S``: the deterministic corpus, N cases, as the test suite
  does with 100,000; prints what was accepted and refused, and the rate;
- ``--atheris [libFuzzer options] [CORPUS_DIR ...]``: coverage-guided, with
  atheris (PyPI ``atheris``, in the ``test`` extra where a wheel exists). An
  input is one byte choosing the topic, the rest is the payload; a broken
  invariant (``Violation``) or any exception is a crash libFuzzer saves.
  ``--write-seeds DIR`` fills a directory with corpus cases to start from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fuzz.corpus import CORPUS_VERSION, Target, generate


def encode_input(targets: list[Target], target: str, topic: str, payload: bytes) -> bytes:
    """A corpus case as a fuzzer input: the topic's index, then the payload."""
    topics = all_topics(targets)
    return bytes([topics.index(topic) % 256]) + payload


def all_topics(targets: list[Target]) -> list[str]:
    return sorted({t for target in targets for t in (*target.topics, *target.hostile_topics)})


def decode_input(targets: list[Target], data: bytes) -> tuple[str, bytes]:
    topics = all_topics(targets)
    if not data:
        return topics[0], b""
    return topics[data[0] % len(topics)], data[1:]


def parse_args(description: str, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided; other arguments go to libFuzzer")
    parser.add_argument("--write-seeds", type=Path, metavar="DIR")
    parser.add_argument("--json", action="store_true")
    return parser.parse_known_args(argv)


def run_fuzz(
    name: str,
    argv: list[str],
    make: Callable[[Path], contextlib.AbstractAsyncContextManager[Any]],
    feed_one: Callable[[Any, str, bytes], Any],
    summary: Callable[[Any], dict[str, Any]],
) -> int:
    """The entry point of one side: ``make(tmp)`` builds its harness, ``feed_one(h, topic,
    payload)`` hands it one message (a coroutine), ``summary(h)`` reports."""
    args, rest = parse_args(f"Fuzz the {name} with hostile input.", argv)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix=f"ems-fuzz-{name}-") as tmp:
        manager = make(Path(tmp))
        harness = loop.run_until_complete(manager.__aenter__())
        try:
            if args.write_seeds is not None:
                args.write_seeds.mkdir(parents=True, exist_ok=True)
                for i, case in enumerate(generate(harness.targets, args.cases, args.seed)):
                    data = encode_input(harness.targets, case.target, case.topic, case.payload)
                    (args.write_seeds / f"seed-{i:06d}").write_bytes(data)
                print(f"{args.cases} seeds in {args.write_seeds}")
                return 0
            if args.atheris:
                return _atheris(harness, loop, rest, feed_one)
            t0 = time.perf_counter()
            loop.run_until_complete(harness.feed(generate(harness.targets, args.cases,
                                                          args.seed)))
            elapsed = time.perf_counter() - t0
            report = {"side": name, "corpus_version": CORPUS_VERSION, "seed": args.seed,
                      "cases": args.cases, "seconds": round(elapsed, 2),
                      "cases_per_s": round(args.cases / elapsed), **summary(harness)}
            print(json.dumps(report, indent=None if args.json else 1))
            return 0
        finally:
            loop.run_until_complete(manager.__aexit__(None, None, None))
            loop.close()


def _atheris(harness: Any, loop: asyncio.AbstractEventLoop, rest: list[str],
             feed_one: Callable[[Any, str, bytes], Any]) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris: wheels for CPython 3.11 on "
              "x86-64 Linux); the deterministic mode (--cases) needs nothing more",
              file=sys.stderr)
        return 2

    def one_input(data: bytes) -> None:
        topic, payload = decode_input(harness.targets, data)
        loop.run_until_complete(feed_one(harness, topic, payload))

    atheris.Setup([sys.argv[0], *rest], one_input)
    atheris.Fuzz()
    return 0

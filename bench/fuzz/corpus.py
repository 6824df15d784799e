"""The hostile-input corpus: deterministic, generated in code, versioned.

``generate(targets, n, seed)`` yields ``n`` cases ``(topic, payload, target,
mutation)``: each starts from a valid message of one target (a topic the
service reads, with a maker of valid payloads) and goes through zero to three
mutations drawn from ``MUTATIONS``. The same (``CORPUS_VERSION``, targets,
seed) gives the same cases, so a failure names its case by index and replays.

The mutations cover what docs/reliability.md lists: malformed and truncated
JSON, wrong types, NaN / Infinity / -0, huge numbers, negative and absurd
powers, oversized payloads (> 16 KiB, 1 MiB), deep nesting, unknown fields,
another site's id in a payload, stale, future and unrepresentable cycle ids
and times, non-UTF-8, empty and binary payloads, duplicate keys, top-level
non-objects, and duplicates (the same message several times). A site-scoped
target is also sent on the topics of unknown sites and of malformed ids.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

CORPUS_VERSION = 1
"""Bump when a change to the generator changes the cases a seed gives."""

Seed = Callable[[random.Random], "dict[str, Any] | bytes"]
"""A maker of one valid payload: a JSON object (a dict) or raw bytes (device words)."""


class Case(NamedTuple):
    """One input: where it goes, what it carries, which target and mutations made it."""

    topic: str
    payload: bytes
    target: str
    mutation: str


@dataclass(frozen=True)
class Target:
    """A topic a service reads and how to make a valid payload for it.

    ``topics`` are the topics it may arrive on (a site-scoped target lists one
    per known site); ``hostile_topics`` the same leaf under unknown or
    malformed site ids, used by a share of the cases.
    """

    name: str
    topics: tuple[str, ...]
    seed: Seed
    hostile_topics: tuple[str, ...] = ()
    site_keys: tuple[str, ...] = field(default=())  # other sites' ids to slip into a payload


class _Raw:
    """A JSON token written as is (NaN, 1e400, deep nesting): ``json`` cannot make them."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def dumps(obj: Any) -> bytes:
    """JSON of ``obj`` with ``_Raw`` tokens spliced in (and NaN/Infinity as Python writes them)."""
    try:
        return orjson.dumps(obj)  # the common case, 10x faster
    except (TypeError, orjson.JSONEncodeError):
        pass  # _Raw tokens, lone surrogates, integers past 64 bits
    raws: list[str] = []

    def default(o: Any) -> Any:
        if isinstance(o, _Raw):
            raws.append(o.text)
            return f"\x00RAW{len(raws) - 1}\x00"
        raise TypeError(type(o).__name__)

    text = json.dumps(obj, default=default, separators=(",", ":"), ensure_ascii=False)
    if raws:  # one pass: a list of many tokens must not cost tokens x length
        text = _RAW_RE.sub(lambda m: raws[int(m.group(1))], text)
    return text.encode("utf-8", "surrogatepass")


_RAW_RE = re.compile(r'"\\u0000RAW(\d+)\\u0000"')


# Values a mutation puts somewhere ------------------------------------------------------
WRONG_TYPES: tuple[Any, ...] = (
    None, True, False, "", "x", "1.5", 0, 1, -1, 1.5, [], {}, [1, 2], {"a": 1}, "null",
)
NUMBERS: tuple[Any, ...] = (
    _Raw("NaN"), _Raw("Infinity"), _Raw("-Infinity"), _Raw("-0.0"), _Raw("-0"), _Raw("1e400"),
    _Raw("-1e400"), _Raw("1e-400"), 1.7976931348623157e308, 5e-324, 2**63, 2**64, -(2**63),
    10**30, _Raw("1" + "0" * 5000), 1e6, -1e6, 50.000001, -50.000001, -1.0, -0.001, 1e-9,
)
POWERS: tuple[Any, ...] = (-5.0, -1e-12, -50.0, 50.0, 50.0000001, 1000.0, 1e6, 1e15, 9e307)
TIMES: tuple[Any, ...] = (
    "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999Z", "2026-02-30T12:00:00Z", "2026-06-21T24:00:00Z",
    "2026-06-21T23:59:60Z", "2026-06-21T12:15:00", "2026-06-21T12:15:00+02:00",
    "2026-06-21T12:15:00-00:00", "2026-06-21T12:15:00z", "2026-06-21 12:15:00Z",
    "2026-06-21", "12:15:00Z", "", "now", 1750508100, 1750508100.5, _Raw("1e400"),
    "+275760-09-13T00:00:00Z", "2026-06-21T12:15:00.123456789Z",
)
DAYS: tuple[Any, ...] = (
    "0001-01-01", "9999-12-31", "2026-02-29", "2024-02-29", "2026-13-01", "2026-06-21T00:00:00Z",
    "20260621", "", 20260621, "2026-10-25", "2026-03-29",
)
STRINGS: tuple[str, ...] = (
    "", " ", "\u0000", "\ud800", "\udfff", "😀" * 50, "\u202egnp.exe", "a" * 5000,
    "<script>", "${jndi:x}", "' OR 1=1 --", "../../etc/passwd", "%s%s%n", "\n\r\t",
)
IDS: tuple[str, ...] = ("", "A", "-x", "x" * 33, "wh/0", "wh#", "wh+", "é", "\u0000", "wh ")
TOPLEVEL: tuple[bytes, ...] = (
    b"[]", b"[1,2,3]", b'"online"', b"1", b"-0", b"null", b"true", b"false", b"NaN", b"{}",
    b"[{}]", b'{"v":1}', b'{"v":1}{"v":1}', b" ", b"\n",
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    # A big container (an earlier mutation's) counts as one value: its first items only.
    out: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:16]:
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


def _delete(obj: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        obj = obj[part]
    del obj[path[-1]]


def _pick(rng: random.Random, obj: dict[str, Any], suffixes: tuple[str, ...] = ()) -> Any:
    paths = _paths(obj)
    if suffixes:
        paths = [p for p in paths if isinstance(p[-1], str) and p[-1].endswith(suffixes)]
    return rng.choice(paths) if paths else None


# Mutations on a JSON object ------------------------------------------------------------
def _drop_field(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    path = _pick(rng, d)
    if path is not None:
        _delete(d, path)


def _wrong_type(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    path = _pick(rng, d)
    if path is not None:
        _set(d, path, rng.choice(WRONG_TYPES))


def _odd_number(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    path = _pick(rng, d)
    if path is not None:
        _set(d, path, rng.choice(NUMBERS))


def _absurd_power(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    path = _pick(rng, d, ("_kw", "_kwh", "power", "apower", "total"))
    if path is not None:
        _set(d, path, rng.choice(POWERS + NUMBERS))


def _odd_time(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    path = _pick(rng, d, ("cycle", "ts", "period", "period_start", "period_end", "reply_by",
                          "valid_until", "until", "from", "updated"))
    if path is not None:
        _set(d, path, rng.choice(TIMES))


def _shift_cycle(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    """A stale or a future cycle id (one or many periods away), still well formed."""
    for key in ("cycle", "period", "period_start", "valid_until"):
        if isinstance(d.get(key), str) and d[key].endswith("Z"):
            periods = rng.choice((-96, -2, -1, 1, 2, 96, 35040))
            try:
                at = datetime.fromisoformat(d[key].replace("Z", "+00:00"))
                d[key] = (at + timedelta(minutes=15 * periods)).isoformat().replace("+00:00", "Z")
            except (ValueError, OverflowError):  # an earlier mutation made it odd: keep it
                pass
            return


def _odd_day(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    if "day" in d:
        d["day"] = rng.choice(DAYS)
    else:
        _odd_time(rng, d, t)


def _unknown_fields(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    for _ in range(rng.randint(1, 4)):
        key = rng.choice(("x", "extra", "__proto__", "constructor", "V", "v ", "seq2", "😀"))
        d[key] = rng.choice((*WRONG_TYPES, {"k" * 10: list(range(100))}))


def _big_unknown_field(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    d["x"] = {f"k{i}": i for i in range(rng.choice((100, 600)))}


def _deep_nesting(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    depth = rng.choice((16, 128, 1025, 5000))
    kind = rng.random() < 0.5
    text = ("[" * depth + "1" + "]" * depth) if kind else ('{"a":' * depth + "1" + "}" * depth)
    path = _pick(rng, d)
    if path is None or rng.random() < 0.3:
        d["nest"] = _Raw(text)
    else:
        _set(d, path, _Raw(text))


def _other_site(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    key = rng.choice(("site", "site_id"))
    d[key] = rng.choice(t.site_keys or ("intruder", *IDS))


def _bad_version(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    choice = rng.choice((2, 0, -1, True, "1", 1.0, None, 2**64, "missing"))
    if choice == "missing":
        d.pop("v", None)
    else:
        d["v"] = choice


def _odd_string(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    paths = [p for p in _paths(d) if isinstance(p[-1], str)]
    if paths:
        _set(d, rng.choice(paths), rng.choice(STRINGS + IDS))


def _long_list(rng: random.Random, d: dict[str, Any], t: Target) -> None:
    lists = [p for p in _paths(d) if isinstance(_get(d, p), list)]
    if lists:
        path = rng.choice(lists)
        items = _get(d, path)
        n = rng.choice((0, 1, 22, 26, 65, 257, 600))
        item = items[0] if items else 1
        _set(d, path, [item] * n)
    else:
        d[rng.choice(("loads", "hours", "x"))] = [rng.choice(WRONG_TYPES)] * rng.choice((0, 300))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


JsonMutation = Callable[[random.Random, dict[str, Any], Target], None]
JSON_MUTATIONS: dict[str, JsonMutation] = {
    "drop_field": _drop_field,
    "wrong_type": _wrong_type,
    "odd_number": _odd_number,
    "absurd_power": _absurd_power,
    "odd_time": _odd_time,
    "shift_cycle": _shift_cycle,
    "odd_day": _odd_day,
    "unknown_fields": _unknown_fields,
    "big_unknown_field": _big_unknown_field,
    "deep_nesting": _deep_nesting,
    "other_site": _other_site,
    "bad_version": _bad_version,
    "odd_string": _odd_string,
    "long_list": _long_list,
}


# Mutations on bytes --------------------------------------------------------------------
def _truncate(rng: random.Random, b: bytes) -> bytes:
    return b[: rng.randrange(len(b))] if b else b


def _empty(rng: random.Random, b: bytes) -> bytes:
    return b""


def _binary(rng: random.Random, b: bytes) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))


def _non_utf8(rng: random.Random, b: bytes) -> bytes:
    bad = rng.choice((b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                      b"\xc0\xaf", b"\x80"))
    at = rng.randint(0, len(b))
    return b[:at] + bad + b[at:]


def _oversized(rng: random.Random, b: bytes) -> bytes:
    size = rng.choice((16 * 1024 + 1, 17 * 1024, 64 * 1024 + 1, 16 * 1024 + 1, 1024 * 1024))
    if b.startswith(b"{") and b.endswith(b"}"):
        return b[:-1] + b',"pad":"' + b"x" * size + b'"}'
    return b + b" " * size


def _bitflip(rng: random.Random, b: bytes) -> bytes:
    if not b:
        return b
    data = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def _wrap(rng: random.Random, b: bytes) -> bytes:
    return rng.choice((b"\xef\xbb\xbf" + b, b"  " + b + b"\n", b + b"garbage", b + b",", b + b"}",
                       b"[" + b + b"]", b + b + b""))


def _duplicate_key(rng: random.Random, b: bytes) -> bytes:
    if b.startswith(b"{") and b.endswith(b"}") and len(b) > 2:
        key = rng.choice((b'"v":2', b'"v":1', b'"flex_kw":1e9', b'"net_export_kw":-1e9',
                          b'"state":"offline"', b'"cycle":"1970-01-01T00:00:00Z"', b'"seq":-1'))
        return b[:-1] + b"," + key + b"}"
    return b


def _toplevel(rng: random.Random, b: bytes) -> bytes:
    return rng.choice(TOPLEVEL)


ByteMutation = Callable[[random.Random, bytes], bytes]
BYTE_MUTATIONS: dict[str, ByteMutation] = {
    "truncate": _truncate,
    "empty": _empty,
    "binary": _binary,
    "non_utf8": _non_utf8,
    "oversized": _oversized,
    "bitflip": _bitflip,
    "wrap": _wrap,
    "duplicate_key": _duplicate_key,
    "toplevel": _toplevel,
}

WORDS: tuple[bytes, ...] = (
    b"on", b"off", b"ON", b" On ", b"overpower", b"true", b"false", b"TRUE", b"1", b"0", b"-0",
    b"12.5", b"-12.5", b"1e3", b"1_000", b"0x10", b"\xd9\xa1\xd9\xa2", b"nan", b"NaN", b"inf",
    b"-Infinity", b"1e400", b"9" * 400, b"", b" ", b"null", b'"1"', b"[1]", b'{"power":1}',
    b"auto", b"force_on", b"force_off", b"online", b"offline", b"\x00", b"\xff\xfe",
)
"""Replacements for payloads that are plain words or numbers (Gen1 topics, HA commands)."""

MUTATIONS: tuple[str, ...] = (*JSON_MUTATIONS, *BYTE_MUTATIONS, "word", "duplicate", "topic")
"""Every mutation's name: a case's ``mutation`` is ``valid`` or a ``+``-joined list of these."""


def mutate(rng: random.Random, target: Target, seed: dict[str, Any] | bytes) -> tuple[bytes, str]:
    """One payload from ``seed``: valid (about 1 case in 8) or through 1-3 mutations."""
    if rng.random() < 0.125:
        return (dumps(seed) if isinstance(seed, dict) else seed), "valid"
    names: list[str] = []
    if isinstance(seed, dict):
        data = orjson.loads(orjson.dumps(seed))
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if rng.random() < 0.7:
                name = rng.choice(tuple(JSON_MUTATIONS))
                JSON_MUTATIONS[name](rng, data, target)
                names.append(name)
        payload = dumps(data)
    else:
        payload = seed
        if rng.random() < 0.6:
            payload = rng.choice(WORDS)
            names.append("word")
    if not names or rng.random() < 0.35:
        name = rng.choice(tuple(BYTE_MUTATIONS))
        payload = BYTE_MUTATIONS[name](rng, payload)
        names.append(name)
    return payload, "+".join(names)


def generate(targets: list[Target], n: int, seed: int = 0) -> Iterator[Case]:
    """``n`` cases over ``targets``, the same for the same seed and ``CORPUS_VERSION``."""
    rng = random.Random(f"ems-hostile-v{CORPUS_VERSION}-{seed}")
    made = 0
    while made < n:
        target = rng.choice(targets)
        topic = rng.choice(target.topics)
        mutation_prefix = ""
        if target.hostile_topics and rng.random() < 0.08:
            topic = rng.choice(target.hostile_topics)
            mutation_prefix = "topic+"
        payload, how = mutate(rng, target, target.seed(rng))
        repeat = rng.choice((2, 3, 5)) if rng.random() < 0.03 else 1
        for _ in range(min(repeat, n - made)):
            yield Case(topic, payload, target.name, mutation_prefix + how
                       + ("+duplicate" if repeat > 1 else ""))
            made += 1

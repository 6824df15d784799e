"""Topics of the contract (PROTOCOL.md): exact spelling, parsing, and what is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Route, TopicKind, Topics

K = TopicKind

# (builder, exact topic for community c1 under the default root, route it parses to)
BUILT: list[tuple[str, Callable[[Topics], str], str, Route]] = [
    (
        "site_status",
        lambda t: t.site_status("s1"),
        "ems/c1/site/s1/status",
        Route(K.SITE_STATUS, "s1"),
    ),
    ("netload", lambda t: t.netload("s1"), "ems/c1/site/s1/netload", Route(K.NETLOAD, "s1")),
    ("flex", lambda t: t.flex("s1"), "ems/c1/site/s1/flex", Route(K.FLEX, "s1")),
    ("report", lambda t: t.report("s1"), "ems/c1/site/s1/report", Route(K.REPORT, "s1")),
    (
        "load_state",
        lambda t: t.load_state("s1", "wh"),
        "ems/c1/site/s1/load/wh/state",
        Route(K.LOAD_STATE, "s1", "wh"),
    ),
    ("alloc", lambda t: t.alloc("s1"), "ems/c1/alloc/s1", Route(K.ALLOC, "s1")),
    ("ack", lambda t: t.ack("s1"), "ems/c1/ack/s1", Route(K.ACK, "s1")),
    ("cycle_request", lambda t: t.cycle_request(), "ems/c1/cycle/request", Route(K.CYCLE_REQUEST)),
    ("cycle_closed", lambda t: t.cycle_closed(), "ems/c1/cycle/closed", Route(K.CYCLE_CLOSED)),
    (
        "coordinator_status",
        lambda t: t.coordinator_status(),
        "ems/c1/coordinator/status",
        Route(K.COORDINATOR_STATUS),
    ),
    ("grid_signal", lambda t: t.grid_signal(), "ems/c1/grid/signal", Route(K.GRID_SIGNAL)),
    ("grid_shed", lambda t: t.grid_shed(), "ems/c1/grid/shed", Route(K.GRID_SHED)),
    (
        "admin_signal_set",
        lambda t: t.admin_signal_set(),
        "ems/c1/admin/signal/set",
        Route(K.ADMIN_SIGNAL_SET),
    ),
]
BUILT_IDS = [name for name, *_ in BUILT]


def test_every_topic_kind_has_a_builder_case() -> None:
    assert {route.kind for *_, route in BUILT} == set(TopicKind)


@pytest.mark.parametrize(("name", "build", "expected", "route"), BUILT, ids=BUILT_IDS)
def test_builder_spells_the_protocol_topic(
    name: str, build: Callable[[Topics], str], expected: str, route: Route
) -> None:
    assert build(Topics("c1")) == expected


@pytest.mark.parametrize(("name", "build", "expected", "route"), BUILT, ids=BUILT_IDS)
def test_parse_round_trips_every_kind(
    name: str, build: Callable[[Topics], str], expected: str, route: Route
) -> None:
    topics = Topics("c1")
    assert topics.parse(build(topics)) == route


@pytest.mark.parametrize(("name", "build", "expected", "route"), BUILT, ids=BUILT_IDS)
def test_custom_root_replaces_ems(
    name: str, build: Callable[[Topics], str], expected: str, route: Route
) -> None:
    topics = Topics("c1", root="acme/Prod_1-x")
    topic = build(topics)
    assert topic == "acme/Prod_1-x/" + expected.removeprefix("ems/")
    assert topics.parse(topic) == route
    # A topic under the default root is foreign to a custom-root community.
    assert topics.parse(expected) is None


def test_default_root_and_base() -> None:
    topics = Topics("c1")
    assert topics.root == "ems"
    assert topics.community == "c1"
    assert topics.base == "ems/c1"
    assert topics.everything() == "ems/c1/#"
    assert topics.site_prefix("s1") == "ems/c1/site/s1/#"


ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(community=ids, site=ids, load=ids)
def test_parse_round_trips_any_valid_ids(community: str, site: str, load: str) -> None:
    topics = Topics(community)
    assert topics.parse(topics.site_status(site)) == Route(K.SITE_STATUS, site)
    assert topics.parse(topics.flex(site)) == Route(K.FLEX, site)
    assert topics.parse(topics.load_state(site, load)) == Route(K.LOAD_STATE, site, load)
    assert topics.parse(topics.alloc(site)) == Route(K.ALLOC, site)
    assert topics.parse(topics.ack(site)) == Route(K.ACK, site)


LONGEST_ID = "a" * 32
TOO_LONG_ID = "a" * 33


def test_longest_valid_id_parses() -> None:
    topics = Topics("c1")
    assert topics.parse(f"ems/c1/site/{LONGEST_ID}/flex") == Route(K.FLEX, LONGEST_ID)
    assert topics.parse(f"ems/c1/alloc/{LONGEST_ID}") == Route(K.ALLOC, LONGEST_ID)
    assert Topics(LONGEST_ID).community == LONGEST_ID


NOT_CONTRACT = [
    # foreign roots and communities
    "other/c1/site/s1/status",
    "EMS/c1/cycle/request",
    "/ems/c1/cycle/request",
    "ems/c2/site/s1/status",
    "ems/c1x/site/s1/status",
    "ems/c/site/s1/status",
    "ems",
    "ems/c1",
    "ems/c1/",
    "",
    "shellies/plug-1/relay/0",
    # bad site / load ids
    "ems/c1/site/S1/status",
    f"ems/c1/site/{TOO_LONG_ID}/status",
    "ems/c1/site/-s1/status",
    "ems/c1/site/_s1/status",
    "ems/c1/site/s.1/netload",
    "ems/c1/site//flex",
    "ems/c1/alloc/S1",
    f"ems/c1/alloc/{TOO_LONG_ID}",
    "ems/c1/ack/-s1",
    "ems/c1/site/s1/load/WH/state",
    f"ems/c1/site/s1/load/{TOO_LONG_ID}/state",
    "ems/c1/site/s1/load/-wh/state",
    "ems/c1/site/-s1/load/wh/state",
    # unknown leaves and extra or missing levels
    "ems/c1/site/s1/unknown",
    "ems/c1/site/s1",
    "ems/c1/site/s1/status/extra",
    "ems/c1/site/s1/status/",
    "ems/c1/site/s1/load/wh/state/extra",
    "ems/c1/site/s1/load/wh/status",
    "ems/c1/site/s1/load/wh",
    "ems/c1/alloc",
    "ems/c1/alloc/s1/extra",
    "ems/c1/ack/s1/extra",
    "ems/c1/cycle/request/extra",
    "ems/c1/cycle/request/",
    "ems/c1//cycle/request",
    "ems/c1/cycle/other",
    "ems/c1/grid/other",
    "ems/c1/coordinator/status/x",
    "ems/c1/admin/signal",
    "ems/c1/admin/signal/set/extra",
    "ems/c1/admin/other/set",
    # wildcards are never a topic
    "ems/c1/#",
    "ems/c1/+",
    "ems/c1/site/+/status",
    "ems/c1/site/#",
    "ems/c1/site/s1/#",
    "ems/c1/site/s1/load/+/state",
    "ems/c1/alloc/+",
    "ems/c1/ack/#",
    "ems/c1/cycle/+",
    "ems/c1/cycle/#",
    "ems/c1/+/request",
    "ems/c1/grid/+",
    "ems/c1/admin/#",
    "ems/+/site/s1/status",
]


@pytest.mark.parametrize("topic", NOT_CONTRACT)
def test_parse_refuses_what_is_not_a_contract_topic(topic: str) -> None:
    assert Topics("c1").parse(topic) is None


@settings(max_examples=300, deadline=None)
@given(topic=st.text(max_size=80))
def test_parse_never_raises_and_returns_a_route_or_none(topic: str) -> None:
    topics = Topics("c1")
    route = topics.parse(topic)
    assert route is None or isinstance(route, Route)
    if route is not None:
        assert topic.startswith("ems/c1/")
        assert "+" not in topic and "#" not in topic


@pytest.mark.parametrize(
    "community", ["C1", "-c1", "_c1", "", TOO_LONG_ID, "c/1", "c+", "c#", "c 1", "c1\n", "é"]
)
def test_invalid_community_id_raises_at_construction(community: str) -> None:
    with pytest.raises(ValueError, match="community"):
        Topics(community)


@pytest.mark.parametrize(
    "root", ["", "/", "ems/", "/ems", "ems//x", "ems/+", "ems/#", "#", "e ms", "ems\n"]
)
def test_invalid_root_raises_at_construction(root: str) -> None:
    with pytest.raises(ValueError, match="root"):
        Topics("c1", root=root)


# Broker ACL (PROTOCOL.md, "Who may write what"): the subscriptions the package
# hands out must cover what each side reads, and a gateway's write prefix must
# cover everything it writes and nothing addressed to it.


def mqtt_matches(pattern: str, topic: str) -> bool:
    """MQTT 3.1.1 topic-filter matching (section 4.7), enough for these tests."""
    p_levels = pattern.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(p_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(p_levels) == len(t_levels)


def test_mqtt_matches_helper() -> None:
    assert mqtt_matches("a/+/c", "a/b/c")
    assert mqtt_matches("a/#", "a/b/c")
    assert not mqtt_matches("a/+", "a/b/c")
    assert not mqtt_matches("a/b", "a/c")


def test_gateway_writes_only_under_its_site_prefix() -> None:
    t = Topics("c1")
    written = [t.site_status("s1"), t.netload("s1"), t.flex("s1"), t.report("s1")]
    written.append(t.load_state("s1", "wh"))
    prefix = t.site_prefix("s1")
    assert all(mqtt_matches(prefix, topic) for topic in written)
    for not_mine in (t.alloc("s1"), t.ack("s1"), t.flex("s2"), t.cycle_request()):
        assert not mqtt_matches(prefix, not_mine)


def test_gateway_subscriptions_cover_what_it_reads_and_not_other_sites() -> None:
    t = Topics("c1")
    subs = t.gateway_subscriptions("s1")
    reads = [
        t.alloc("s1"),
        t.ack("s1"),
        t.cycle_request(),
        t.cycle_closed(),
        t.grid_signal(),
        t.grid_shed(),
        t.coordinator_status(),
    ]
    for topic in reads:
        assert any(mqtt_matches(sub, topic) for sub in subs), topic
    for other in (t.alloc("s2"), t.ack("s2"), t.flex("s2"), t.admin_signal_set()):
        assert not any(mqtt_matches(sub, other) for sub in subs), other


def test_coordinator_subscriptions_cover_every_gateway_message_and_admin() -> None:
    t = Topics("c1")
    subs = t.coordinator_subscriptions()
    for topic in (
        t.site_status("s9"),
        t.netload("s9"),
        t.flex("s9"),
        t.report("s9"),
        t.admin_signal_set(),
    ):
        assert any(mqtt_matches(sub, topic) for sub in subs), topic
    assert all(sub.startswith("ems/c1/") for sub in subs)

"""Faults of a home: its gateway gone, its clock skewed, its disk full.

Real processes throughout: the coordinator (``python -m central`` or
``crashable_central.py``), gateways (``python -m gateway`` or, with a skewed
clock, ``skewed_gateway.py``) with simulated meters and plugs, on the shared
test Mosquitto.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import (
    CRASHABLE_CENTRAL,
    HERE,
    Home,
    Records,
    Service,
    Watcher,
    applied_allocations,
    central_toml,
    check_alive,
    check_no_allocation_doubled,
    check_no_report_lost,
    parse_utc,
    retained_states,
    until,
    wait_reports_delivered,
)

from protocol import Topics

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(120)]


# A gateway gone ----------------------------------------------------------------------


def test_a_gateway_gone_does_not_hold_up_the_cycle(
    mosquitto: Any, tmp_path: Path, fault_rng: random.Random
) -> None:
    """Frozen (SIGSTOP): the cycles it was asked in close at their reply-by with the
    others' allocations, and once the broker gives up on it (keepalive) its will
    says offline and cycles no longer wait. Killed (SIGKILL): its will says
    offline at once. Both come back and catch up on their reports."""
    port = mosquitto.port
    root = f"t{uuid.uuid4().hex[:10]}"
    topics = Topics("c1", root)
    records = Records(tmp_path / "records.sqlite")
    reply_timeout_s = 1.5
    config = central_toml(tmp_path / "central.toml", port=port, root=root,
                          records=records.path, period_s=2.5, reply_timeout_s=reply_timeout_s)
    central = Service("central", ["-m", "central", "--config", str(config)],
                      tmp_path / "central.log")
    homes = [Home(f"h{i}", root, tmp_path / f"h{i}", port, export_w=2500.0, load_kw=1.0)
             for i in range(3)]
    gateways = [h.gateway() for h in homes]
    for h in homes:  # the broker gives up on a silent client after 1.5 x keepalive
        h.config.write_text(h.config.read_text().replace(
            'protocol = "3.1.1"\n', 'protocol = "3.1.1"\nkeepalive_s = 5\n'))
    frozen, killed = fault_rng.sample(range(3), 2)
    found: dict[str, Any] = {}

    def site_state(site: str) -> str | None:
        last = watcher.last(topics.site_status(site))
        return last["state"] if last else None

    async def scenario() -> None:
        for h in homes:
            await asyncio.to_thread(h.start_devices)
        central.start()
        for gw in gateways:
            gw.start()
        await until(lambda: len(records.cycles()) >= 2 and records.decisions(),
                    "cycles before any fault", 40)
        # Frozen at a random point of a cycle: alive for TCP, silent for MQTT.
        await asyncio.sleep(fault_rng.uniform(0.0, 2.5))
        gateways[frozen].signal(signal.SIGSTOP)
        stopped_at = datetime.now(UTC)
        await until(lambda: site_state(homes[frozen].site) == "offline",
                    "the frozen gateway's will", 30)
        found["will_after_s"] = round((datetime.now(UTC) - stopped_at).total_seconds(), 1)
        n = len(records.cycles())
        await until(lambda: len(records.cycles()) >= n + 1, "a cycle without it", 20)
        gateways[frozen].signal(signal.SIGCONT)
        await until(lambda: site_state(homes[frozen].site) == "online", "back online", 30)
        # Killed: the socket closes, the broker sends the will at once.
        await asyncio.sleep(fault_rng.uniform(0.0, 2.5))
        gateways[killed].kill()
        await until(lambda: site_state(homes[killed].site) == "offline", "the killed one's will")
        n = len(records.cycles())
        await until(lambda: len(records.cycles()) >= n + 1, "a cycle without it", 20)
        gateways[killed].start()  # the same state: its outbox and seq go on
        await until(lambda: site_state(homes[killed].site) == "online", "restarted")
        await wait_reports_delivered(records, homes)
        check_alive(port, topics, [central, *gateways], [h.site for h in homes])
        for gw in gateways:
            assert await gw.stop() == 0
        assert await central.stop() == 0

    watcher = Watcher(port, topics)
    try:
        asyncio.run(scenario())
    finally:
        for svc in (central, *gateways):
            if svc.alive():
                svc.signal(signal.SIGCONT)
            svc.kill()
        for h in homes:
            h.stop_devices()
        watcher.close()

    found["reports"] = check_no_report_lost(records, homes)
    found["decisions"] = check_no_allocation_doubled(records, applied_allocations(gateways))
    # No cycle waited for a gateway gone: each closed by its reply-by at the latest.
    cycles = [c for c in records.cycles() if c["closed_at"] is not None]
    late = [c for c in cycles
            if c["reply_by"] and parse_utc(c["closed_at"]) > parse_utc(c["reply_by"])
            + timedelta(seconds=1.0)]
    assert not late, late
    # Frozen but still counted online, it made some cycles close at their deadline,
    # with the other sites' allocations.
    deadline = [c for c in cycles if c["close_reason"] == "deadline"]
    decided = {(c, s) for c, s, _, _ in records.decisions()}
    frozen_site = homes[frozen].site
    for c in deadline:
        assert (c["cycle"], frozen_site) not in decided
    if deadline:
        assert any((c["cycle"], h.site) in decided for c in deadline for h in homes
                   if h.site != frozen_site)
    # Once its will said offline, it was no longer asked: later cycles had 2 sites.
    assert any(c["sites"] == 2 and c["close_reason"] in ("all_replied", "exhausted")
               for c in cycles)
    print("gateway gone:", found, "deadline closes:", len(deadline), "cycles:", len(cycles))


# A clock skewed by minutes --------------------------------------------------------------


def test_a_gateway_clock_skewed_by_minutes(mosquitto: Any, tmp_path: Path) -> None:
    """Cycle ids come from the coordinator, so skewed gateways answer the right cycle
    and get their allocations. Each then holds its allocation until ``valid_until``
    by ITS clock: ahead by 140 s of a 150 s period, it switches its load off about
    140 s early; ahead by more than the period, the allocation has already expired
    for it and it refuses it. Reports are recorded with the periods the gateways
    stamp them with (their clocks)."""
    port = mosquitto.port
    root = f"t{uuid.uuid4().hex[:10]}"
    topics = Topics("c1", root)
    records = Records(tmp_path / "records.sqlite")
    period_s = 150.0
    skews = {"ahead": 140.0, "behind": -140.0, "past": 200.0}
    config = central_toml(tmp_path / "central.toml", port=port, root=root,
                          records=records.path, period_s=period_s, reply_timeout_s=5.0)
    homes = {name: Home(name, root, tmp_path / name, port, export_w=2000.0, load_kw=1.0)
             for name in skews}
    gateways = {
        name: h.gateway([str(HERE / "skewed_gateway.py"), str(h.config), str(skews[name])])
        for name, h in homes.items()
    }
    central = Service("crashable central",
                      [str(CRASHABLE_CENTRAL), str(config), str(2.0 * len(homes))],
                      tmp_path / "central.log")

    async def scenario() -> None:
        for h in homes.values():
            await asyncio.to_thread(h.start_devices)
        for gw in gateways.values():
            gw.start()
        central.start()
        await until(lambda: len(records.decisions()) == 3, "a decision for each", 40)
        await until(lambda: len(applied_allocations(list(gateways.values()))) == 2
                    and gateways["past"].events("allocation_received"), "allocations", 20)
        # The one 140 s ahead sees its allocation end 10 s after the period started.
        await until(lambda: any(not e["on"] for e in gateways["ahead"].events("load_switched")),
                    "the ahead gateway's allocation expires by its clock", 30)
        await wait_reports_delivered(records, list(homes.values()))
        check_alive(port, topics, [central, *gateways.values()], list(homes))
        for gw in gateways.values():
            assert await gw.stop() == 0
        assert await central.stop() == 0

    try:
        asyncio.run(scenario())
    finally:
        for svc in (central, *gateways.values()):
            svc.kill()
        for h in homes.values():
            h.stop_devices()

    [cycle] = records.cycles()
    valid_until = parse_utc(cycle["cycle"]) + timedelta(seconds=period_s)
    decided = {s for _, s, _, _ in records.decisions()}
    assert decided == set(homes)  # every skewed gateway replied to the coordinator's cycle
    applied = {e["site"] for e in applied_allocations(list(gateways.values()))}
    assert applied == {"ahead", "behind"}
    [refused] = gateways["past"].events("allocation_refused")
    assert refused["why"] == "expired"
    switched_off = [e for e in gateways["ahead"].events("load_switched") if not e["on"]]
    off_at = parse_utc(switched_off[0]["timestamp"])
    early_s = (valid_until - off_at).total_seconds()
    # Off by its own clock's valid_until: the skew early, within a few ticks.
    assert early_s == pytest.approx(skews["ahead"], abs=3.0)
    assert all(e["on"] for e in gateways["behind"].events("load_switched"))
    reports = check_no_report_lost(records, list(homes.values()))
    check_no_allocation_doubled(records, applied_allocations(list(gateways.values())))
    for name, skew in skews.items():
        for _, period, received in records.reports(name):
            lag = (parse_utc(received) - parse_utc(period)).total_seconds()
            assert lag == pytest.approx(-skew, abs=3.0), (name, period, received)
    print("skew: ahead off", round(early_s, 1), "s before valid_until; reports", reports)


# A full disk ---------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def test_the_outbox_disk_full(mosquitto: Any, tmp_path: Path) -> None:
    """The gateway's state directory on a real 1 MiB tmpfs (root; otherwise the test
    says so and simulates the short disk with a reserve above the free space).
    While the coordinator is away, the disk runs short (below the reserve): the
    outbox stops growing and drops its oldest reports, counted in the gateway's
    status; then full: reports are not stored but kept in memory. The gateway
    runs on; with room and the coordinator back, everything not dropped is
    delivered and acknowledged past the dropped ones."""
    port = mosquitto.port
    root = f"t{uuid.uuid4().hex[:10]}"
    topics = Topics("c1", root)
    records = Records(tmp_path / "records.sqlite")
    config = central_toml(tmp_path / "central.toml", port=port, root=root,
                          records=records.path, period_s=3600, reply_timeout_s=5.0)
    home = Home("h0", root, tmp_path / "h0", port, export_w=1000.0)
    real_fs = _mount_tmpfs(home.state_dir, "1m")
    reserve = 256 * 1024
    home.outbox = {"disk_reserve_bytes": reserve}
    print("outbox file system:", "tmpfs 1 MiB" if real_fs else "simulated (not root)")
    ballast = home.state_dir / "ballast"

    def fill(leave: int) -> None:
        free = shutil.disk_usage(home.state_dir).free
        with ballast.open("ab") as f:
            f.write(b"\0" * max(0, free - leave))

    def central_service() -> Service:
        return Service("central", ["-m", "central", "--config", str(config)],
                       tmp_path / "central.log")

    gateway = home.gateway()
    central = central_service()
    found: dict[str, Any] = {}

    async def scenario() -> None:
        nonlocal central, gateway
        await asyncio.to_thread(home.start_devices)
        central.start()
        gateway.start()
        await until(lambda: len(records.report_seqs("h0")) >= 2, "reports recorded", 30)
        assert await central.stop() == 0  # reports now stay in the outbox
        await until(lambda: len(home.outbox_state().pending) >= 3, "reports pile up")
        if real_fs:
            fill(leave=reserve // 2)  # short: below the reserve
        else:
            assert await gateway.stop() == 0
            home.outbox = {"disk_reserve_bytes": 2**40}  # more than any disk has free
            gateway = home.gateway()
            gateway.start()
        await until(lambda: home.outbox_state().dropped >= 3, "oldest reports dropped")
        kept = len(home.outbox_state().pending)
        await asyncio.sleep(2.0)
        assert len(home.outbox_state().pending) <= kept  # the outbox does not grow
        if real_fs:
            fill(leave=0)  # full: SQLite cannot write at all (faults §0.4)
            await until(lambda: gateway.events("report_not_stored"), "a report not stored")
            await until(lambda: len(gateway.events("report_not_stored")) >= 2, "still running")
            found["not_stored"] = len(gateway.events("report_not_stored"))
            assert len(gateway.events("outbox_write_failed")) == 1  # one warning, not one a report
            ballast.unlink()
        else:
            assert await gateway.stop() == 0
            home.outbox = {}
            gateway = home.gateway()
            gateway.start()
        assert gateway.alive()
        central = central_service()
        central.start()
        await wait_reports_delivered(records, [home])
        box = home.outbox_state()
        found.update(dropped=box.dropped, generated=box.last_seq)
        states = retained_states(port, topics, ["h0"])
        assert states == {"coordinator": "online", "h0": "online"}
        status = watcher.last(topics.site_status("h0"))
        assert status is not None and status["reports_dropped"] == box.dropped
        check_alive(port, topics, [central, gateway], ["h0"])
        assert await gateway.stop() == 0
        assert await central.stop() == 0
        # Every report but the counted drops is recorded once (read before unmounting).
        found["recorded"] = check_no_report_lost(records, [home])["h0"]

    watcher = Watcher(port, topics)
    try:
        asyncio.run(scenario())
    finally:
        for svc in (central, gateway):
            svc.kill()
        home.stop_devices()
        watcher.close()
        if real_fs:
            subprocess.run(["umount", str(home.state_dir)], check=False, capture_output=True)
    assert found["dropped"] >= 3 and found["recorded"] > 0
    drops = gateway.events("outbox_full_dropping_oldest")
    assert len(drops) == 1 and drops[0]["reason"] == "disk_reserve"
    print("disk full:", found)

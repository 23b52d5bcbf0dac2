"""What is served: aliases moved by promote and rollback only, every move recorded, and the index's lease."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
import uuid

import numpy as np
import pytest

from r2end_core.config import IndexConfig
from r2end_core.layout import Layout
from r2end_core.serve import aliases, index
from r2end_core.summaries import Lease
from tests.serve.test_index import catalogue, summary


def built(layout: Layout, name: str) -> str:
    """A real (tiny) index version named ``name``."""
    index.save(
        layout, index.build(np.eye(3, dtype=np.float32), IndexConfig(kind="flat")), catalogue(3), summary(name, 3)
    )
    return name


def test_building_moves_nothing_served_promote_and_rollback_do(tmp_path):
    layout = Layout(str(tmp_path))
    first = built(layout, "flat-0001")
    with pytest.raises(FileNotFoundError, match="no index version promoted to 'live'.*ray_jobs.promote"):
        index.resolve_version(layout, "live")
    aliases.promote(layout, first, by="ann@host")
    second = built(layout, "flat-0002")
    assert index.resolve_version(layout, "latest") == second and index.resolve_version(layout, "live") == first
    aliases.promote(layout, second, by="bob@host")
    third = built(layout, "flat-0003")
    aliases.promote(layout, third)
    assert index.resolve_version(layout, "live") == third
    assert aliases.rollback(layout).version == second  # back through the promotions, one at a time
    record = aliases.rollback(layout, by="ann@host")
    assert record.version == first == index.resolve_version(layout, "live")
    assert [(m.action, m.version, m.by) for m in record.moves][:2] == [
        ("promote", first, "ann@host"),
        ("promote", second, "bob@host"),
    ]
    assert [m.action for m in aliases.read(layout).moves] == ["promote"] * 3 + ["rollback"] * 2
    with pytest.raises(ValueError, match="no earlier promotion"):
        aliases.rollback(layout)
    with pytest.raises(FileNotFoundError, match="'flat-9999' not found"):
        aliases.promote(layout, "flat-9999")
    with pytest.raises(ValueError, match="lower-case letters"):
        aliases.promote(layout, first, alias="Live-2")
    aliases.promote(layout, second, alias="canary")  # aliases are independent
    assert index.resolve_version(layout, "canary") == second and index.resolve_version(layout, "live") == first


def test_a_second_writer_is_kept_out_while_the_lease_is_held(tmp_path):
    layout = Layout(str(tmp_path))
    with aliases.lease(layout, "first"):
        with pytest.raises(aliases.LeaseHeld, match="first is writing the index"):
            with aliases.lease(layout, "second"):
                pass
    with aliases.lease(layout, "second"):  # released: the next writer gets it
        pass
    # an expired lease (its writer died) is taken over
    Lease(holder="died", token=uuid.uuid4().hex, expires_at=time.time() - 1).write(layout.index_lease)
    with aliases.lease(layout, "next"):
        pass


def test_a_write_longer_than_the_lease_keeps_it(tmp_path):
    """The holder renews its lease while it writes: after three lease periods it is still held, and still its."""
    layout = Layout(str(tmp_path))
    with aliases.lease(layout, "slow", seconds=2.0) as mine:
        time.sleep(6.0)
        with pytest.raises(aliases.LeaseHeld, match="slow is writing the index"):
            with aliases.lease(layout, "second"):
                pass
        assert Lease.model_validate_json(open(layout.index_lease).read()).token == mine.token
    assert not os.path.exists(layout.index_lease)


def test_a_writer_whose_lease_was_taken_over_is_told_so(tmp_path):
    """A writer that stalled past its lease's expiry and lost it to another fails as it exits, and leaves the
    other's lease in place."""
    layout = Layout(str(tmp_path))
    other = Lease(holder="other", token=uuid.uuid4().hex, expires_at=time.time() + 60)
    with pytest.raises(aliases.LeaseHeld, match="taken over while stalled wrote"):
        with aliases.lease(layout, "stalled"):
            other.write(layout.index_lease)  # what take_over and create_json leave once the lease had expired
    assert Lease.model_validate_json(open(layout.index_lease).read()) == other
    # found by the holder's renewal while it still writes: it stops renewing, and leaves the other's lease
    os.remove(layout.index_lease)
    with pytest.raises(aliases.LeaseHeld, match="lapsed or was taken over while renewing wrote"):
        with aliases.lease(layout, "renewing", seconds=2.0):
            os.remove(layout.index_lease)  # as take_over and create_json leave it once the lease had expired
            other.write(layout.index_lease)
            time.sleep(1.0)  # two renewal ticks
            assert Lease.model_validate_json(open(layout.index_lease).read()) == other
    assert Lease.model_validate_json(open(layout.index_lease).read()) == other
    with pytest.raises(ValueError, match="seconds"):
        with aliases.lease(layout, "never", seconds=0):
            pass


@pytest.mark.parametrize("expired_lease", [False, True])
def test_of_writers_racing_for_the_lease_exactly_one_gets_it(tmp_path, expired_lease):
    """Eight writers at once, ten times over, on a local storage path, where no lease is or where an expired one
    is (its writer died): the lease file is created exclusively, and only one writer removes the expired one."""
    layout = Layout(str(tmp_path))
    start, done = threading.Barrier(8), threading.Barrier(8, timeout=30)

    def try_lease(writer: int) -> bool:
        start.wait()
        try:
            with aliases.lease(layout, f"writer-{writer}"):
                done.wait()  # held until every other writer has tried
            return True
        except aliases.LeaseHeld:
            done.wait()
            return False

    for _ in range(10):
        if expired_lease:  # left by a writer that died
            Lease(holder="died", token=uuid.uuid4().hex, expires_at=time.time() - 1).write(layout.index_lease)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(try_lease, range(8))) == 1
        assert os.listdir(os.path.dirname(layout.index_lease)) == []  # released, no marker or staging file left

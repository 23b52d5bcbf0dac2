"""Which index version is served: named aliases that only ``promote`` and ``rollback`` move, each move recorded,
and a lease that keeps two writers off one storage path's index at once.

    <storage_path>/index/aliases/<alias>.json   summaries.AliasRecord: the version, every move (who, when)
    <storage_path>/index/lease.json             summaries.Lease: who writes index versions or moves aliases

    with aliases.lease(layout):
        aliases.promote(layout, "flat-449988b201")      # "live" now names it; Serve deploys "live" by default
        aliases.rollback(layout)                         # back to the version promoted before it

Building an index writes a new version and moves nothing that is served. The lease is a file created only where
none is (``storage.create_json``): on a local filesystem, of writers that come at once exactly one gets it; on
object storage, which has no exclusive create, it keeps out a writer that comes while it is held, not one that
writes in the same instant. Its holder renews it every quarter of ``seconds`` while it writes, so a write may
take as long as it needs; a lease expires only when its writer stopped renewing it (died, or stalled: a holder
that finds under a quarter left gives it up, and fails as it exits), and is then taken over, by one of the
writers that find it (``take_over``).
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import logging
import os
import re
import socket
import threading
import time
import uuid

from r2end_core import storage
from r2end_core.layout import Layout
from r2end_core.summaries import AliasMove, AliasRecord, Lease

LIVE = "live"
ALIAS = re.compile(r"^[a-z][a-z0-9_]*$")  # never a version name: those are <kind>-<digest>
LEASE_S = 900.0
log = logging.getLogger("r2end")


class LeaseHeld(RuntimeError):
    """Another writer holds the index's lease, or took it over from this one while it wrote."""


def who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def read(layout: Layout, alias: str = LIVE) -> AliasRecord | None:
    path = layout.index_alias(alias)
    return AliasRecord.model_validate(storage.read_json(path)) if storage.exists(path) else None


def _moved(layout: Layout, alias: str, action: str, version: str, by: str | None) -> AliasRecord:
    if not ALIAS.match(alias):
        raise ValueError(f"alias {alias!r}: lower-case letters, digits and _ only, starting with a letter")
    record = read(layout, alias)
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    move = AliasMove(action=action, version=version, by=by or who(), at=at)
    moved = AliasRecord(alias=alias, version=version, moves=[*(record.moves if record else []), move])
    moved.write(layout.index_alias(alias))  # one atomic write: a reader sees the old record or the new
    return moved


def promote(layout: Layout, version: str, alias: str = LIVE, by: str | None = None) -> AliasRecord:
    """``alias`` names ``version`` (which must exist) from now on."""
    if not storage.exists(layout.index(version, "manifest.json")):
        raise FileNotFoundError(f"index version '{version}' not found under {layout.path('index')}: build it first")
    return _moved(layout, alias, "promote", version, by)


def promoted(record: AliasRecord) -> list[str]:
    """The versions promoted and not rolled back, oldest first: what a rollback walks back through.

    >>> moves = [AliasMove(action=a, version=v, by="u", at="t") for a, v in
    ...          [("promote", "a"), ("promote", "b"), ("promote", "c"), ("rollback", "b")]]
    >>> promoted(AliasRecord(alias="live", version="b", moves=moves))
    ['a', 'b']
    """
    stack: list[str] = []
    for move in record.moves:
        if move.action == "promote":
            stack.append(move.version)
        else:
            stack.pop()
    return stack


def rollback(layout: Layout, alias: str = LIVE, by: str | None = None) -> AliasRecord:
    """``alias`` names the version promoted before its current one again."""
    record = read(layout, alias)
    stack = promoted(record) if record else []
    if len(stack) < 2:
        raise ValueError(f"index alias '{alias}' has no earlier promotion to roll back to")
    return _moved(layout, alias, "rollback", stack[-2], by)


def read_lease(path: str) -> Lease | None:
    """The lease at ``path``; None if there is none (or its holder released it as it was read)."""
    try:
        return Lease.model_validate(storage.read_json(path))
    except FileNotFoundError:
        return None


def take_over(path: str, expired: Lease, layout: Layout) -> None:
    """Remove an expired lease so that a new one can be created. Writers finding the same expired lease race
    for a marker named by its token (created only where none is): the one that gets it removes the lease if it
    is still that one, so a writer arriving late never removes the lease the winner took since."""
    marker = f"{path}.{expired.token}.takeover"
    if not storage.create_json({}, marker):
        raise LeaseHeld(f"another writer is taking over the expired index lease under {layout.root}")
    try:
        if (current := read_lease(path)) and current.token == expired.token:
            storage.delete_file(path)
    finally:
        storage.delete_file(marker)


@contextlib.contextmanager
def lease(layout: Layout, holder: str | None = None, seconds: float = LEASE_S):
    """Hold the index's lease for a write (a build, a promotion): ``LeaseHeld`` if another writer holds an
    unexpired one, or, on exit, if another took it over while this one wrote (this writer had stalled past
    its expiry). Renewed while held; released on exit."""
    if seconds <= 0:
        raise ValueError(f"a lease of {seconds} seconds: it must last a while to be renewed")
    path, mine = layout.index_lease, Lease(holder=holder or f"{who()}:{os.getpid()}", token=uuid.uuid4().hex,
                                          expires_at=time.time() + seconds)  # fmt: skip
    if held := read_lease(path):
        if held.expires_at > time.time():
            left = held.expires_at - time.time()
            raise LeaseHeld(
                f"{held.holder} is writing the index under {layout.root} (its lease has {left:.0f} s left; "
                f"delete {path} if that writer is gone)"
            )
        take_over(path, held, layout)
    if not storage.create_json(mine.model_dump(mode="json"), path):
        raise LeaseHeld(f"another writer took the index's lease under {layout.root} at the same time")
    released, kept = threading.Event(), [True]

    def renew() -> None:
        """Every quarter of the period, push the expiry on. With under a quarter left (the holder stalled, or
        renewals failed) it gives the lease up rather than risk overwriting a writer that took it over once
        it expired; a failed read or write (a storage hiccup) is tried again at the next tick."""
        while not released.wait(seconds / 4):
            if time.time() > mine.expires_at - seconds / 4:
                kept[0] = False
                return
            try:
                if not ((current := read_lease(path)) and current.token == mine.token):
                    kept[0] = False
                    return
                renewed = mine.model_copy(update={"expires_at": time.time() + seconds})
                renewed.write(path)
                mine.expires_at = renewed.expires_at
            except OSError as error:
                log.warning(f"renewing the index lease under {layout.root} failed ({error}); trying again")

    renewing = threading.Thread(target=renew, name="index-lease", daemon=True)
    renewing.start()
    try:
        yield mine
    finally:
        released.set()
        renewing.join()
        with contextlib.suppress(FileNotFoundError):
            if (current := read_lease(path)) and current.token == mine.token:
                storage.delete_file(path)
            else:
                kept[0] = False
    if not kept[0]:
        raise LeaseHeld(f"the index's lease under {layout.root} lapsed or was taken over while {mine.holder} wrote")

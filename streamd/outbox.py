"""A durable, bounded, ordered outbox for MQTT messages (SQLite in WAL mode).

paho keeps unacknowledged messages in memory only, and its queue cap rejects *new*
messages, so a broker outage plus a daemon restart would lose everything in between. Every
message is written here before paho sees it and deleted only when the broker acknowledged
it (PUBACK), or, for QoS 0, once paho wrote it to the socket. Rows are delivered in `id`
order, which is the order callers published them in, so per-topic `seq` order survives
outages and restarts.

The bound is `max_messages` and `max_bytes` (payload bytes). Past either, the oldest rows
not yet handed to paho are dropped by kind, in `streamd.contract.DROP_ORDER` (each `Kind`
declares its rank: snapshots first, then stats, detections, descriptions), and counted;
status rows are never dropped (there are at most a handful per camera and they carry the
state a dashboard shows).

Durability: `synchronous=NORMAL` in WAL mode survives a daemon crash or kill; a power cut may
lose the last transactions (the ones the OS had not written), which is the trade for not
paying an fsync per frame on an SD card.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from streamd.contract import DROP_ORDER, Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One stored message; `id` orders delivery."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    camera: str | None


class Outbox:
    """Thread-safe; all methods are short transactions. `close()` is idempotent."""

    def __init__(self, path: Path | str, max_messages: int, max_bytes: int) -> None:
        self.path = Path(path) if path != ":memory:" else path
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.dropped: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None)
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("""CREATE TABLE IF NOT EXISTS outbox (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
                        retain INTEGER NOT NULL, kind TEXT NOT NULL, camera TEXT)""")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id)")
        self._count, self._bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        if self._count:
            log.info("outbox %s holds %d messages (%d bytes) from a previous run", self.path,
                     self._count, self._bytes)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is closed")
        return self._db

    def __len__(self) -> int:
        return int(self._count)

    def last_id(self) -> int:
        """The newest stored id (0 if empty)."""
        with self._lock:
            row = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM outbox").fetchone()
        return int(row[0])

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: Kind | str,
            camera: str | None, sent_up_to: int) -> int:
        """Store a message; make room first if the bound is reached. Rows with
        `id <= sent_up_to` are with paho already and are never dropped. Returns the id."""
        kind = Kind(kind)
        with self._lock:
            db = self._conn()
            while (self._count >= self.max_messages
                   or self._bytes + len(payload) > self.max_bytes) and self._count:
                if not self._drop_one(db, sent_up_to):
                    break
            cur = db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, kind, camera) "
                "VALUES (?, ?, ?, ?, ?, ?)", (topic, payload, qos, int(retain), kind.value,
                                               camera))
            self._count += 1
            self._bytes += len(payload)
            return int(cur.lastrowid or 0)

    def _drop_one(self, db: sqlite3.Connection, sent_up_to: int) -> bool:
        for kind in DROP_ORDER:
            row = db.execute("SELECT id, LENGTH(payload) FROM outbox WHERE kind = ? AND id > ? "
                             "ORDER BY id LIMIT 1", (kind.value, sent_up_to)).fetchone()
            if row is not None:
                db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self._count -= 1
                self._bytes -= row[1]
                if not self.dropped[kind.value]:
                    log.warning("outbox full (%d messages, %d bytes): dropping oldest %s",
                                self._count + 1, self._bytes + row[1], kind.value)
                self.dropped[kind.value] += 1
                return True
        return False

    def after(self, last_id: int, limit: int) -> list[Row]:
        """The next rows to send, in order."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT id, topic, payload, qos, retain, kind, camera FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [Row(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def remove(self, row_id: int) -> None:
        """The broker has it (or, QoS 0, the socket has it)."""
        with self._lock:
            db = self._conn()
            row = db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?",
                             (row_id,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._count -= 1
                self._bytes -= row[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

"""One key followed by a watch in a thread of its own: its changes come to whoever asks as they happen, not by a
read per question. The leader learns that its key was deleted or replaced (`runtime/leadership.py`); a standby
learns of a vacancy, and of the winner's put while it waits its turn to campaign (`runtime/campaign.py`).

Like the resign watch, it outlives compaction and broken streams: it reads the key once and goes on from there,
handing the read over as a change (what the lost history may have said is in the key as it stands now)."""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from singleton.backends.abc import Backend, KeyValue
from singleton.core.errors import BackendError, WatchCompacted

log = logging.getLogger("singleton")

RESTART_PAUSE_S = 0.5  # after a broken stream or a failed read: no tight loop while etcd is away


@dataclass(frozen=True)
class Change:
    kv: KeyValue | None  # the key as it now stands (None: deleted, or absent at a re-read)
    revision: int  # the event's revision (the delete's own), or the revision a re-read was made at
    read: bool = False  # from a re-read after the history was lost, not from an event


def follow_key(backend: Backend, key: str, start_revision: int, stop: threading.Event,
               on_change: Callable[[Change], bool], call_timeout_s: float, what: str) -> None:
    """Hand every change of `key` from `start_revision` on to `on_change`, until `stop` is set or `on_change`
    returns True. Blocks: run it in a thread."""
    revision = start_revision
    while not stop.is_set():
        try:
            for event in backend.watch(key, revision, stop):
                revision = event.revision + 1
                if on_change(Change(None if event.deleted else event.kv, event.revision)):
                    return
            return
        except WatchCompacted as err:
            log.info("%s restarts after compaction: %s", what, err)
        except BackendError as err:
            log.info("%s restarts: %s", what, err)
            if stop.wait(RESTART_PAUSE_S):
                return
        try:
            kv, read_at = backend.get(key, call_timeout_s)
        except BackendError as err:
            log.info("%s could not re-read %s: %s", what, key, err)
            if stop.wait(RESTART_PAUSE_S):
                return
            continue
        if on_change(Change(kv, read_at, read=True)):
            return
        revision = read_at + 1


class KeyFollower:
    """`follow_key` in a thread, its changes queued for one consumer that may wait on them with a deadline (a
    standby waiting its turn: has someone taken the key meanwhile?). The watch ends with `stop`; after `close()`
    it ends at the key's next change (the campaign that follows a close puts the key: ours or the winner's), so no
    thread of ours waits on `stop` and nothing polls."""

    def __init__(self, backend: Backend, key: str, start_revision: int, stop: threading.Event,
                 call_timeout_s: float, what: str) -> None:
        self._changes: queue.Queue[Change | None] = queue.Queue()
        self._closed = threading.Event()
        self._args = (backend, key, start_revision, stop, self._changes_put, call_timeout_s, what)
        self._thread = threading.Thread(target=self._run, daemon=True, name="singleton-key-watch")

    def start(self) -> KeyFollower:
        self._thread.start()
        return self

    def _changes_put(self, change: Change) -> bool:
        if self._closed.is_set():
            return True
        self._changes.put(change)
        return False

    def _run(self) -> None:
        try:
            follow_key(*self._args)
        finally:
            self._changes.put(None)  # the consumer's wait ends with the watch

    def next(self, timeout_s: float | None = None) -> Change | None:
        """The next change; None when the watch has ended (stopped, or closed). Raises queue.Empty after
        `timeout_s` without one."""
        if self._closed.is_set():
            return None
        return self._changes.get(timeout=timeout_s)

    def close(self) -> None:
        self._closed.set()

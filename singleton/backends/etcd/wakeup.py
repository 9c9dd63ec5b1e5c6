"""Run callbacks when a stop event is set, without anyone polling it.

A threading.Event has no callbacks, and a blocking gRPC stream cannot also wait on an Event. Rather than wake
every 100 ms to look at the event, one thread per stop event blocks in `Event.wait()` (no timeout: no timed
wake-ups) and, once the event is set, runs what was registered for it (cancelling the streams it stops)."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

_lock = threading.Lock()
# id(event) -> (event, {registration number: callback}); the entry and its thread live until the event is set.
_waiting: dict[int, tuple[threading.Event, dict[int, Callable[[], object]]]] = {}
_numbers = itertools.count()


def _wait_then_call(event: threading.Event) -> None:
    event.wait()
    with _lock:
        _, callbacks = _waiting.pop(id(event), (event, {}))
    for callback in callbacks.values():
        callback()


def on_set(event: threading.Event, callback: Callable[[], object]) -> Callable[[], None]:
    """Call `callback` (once, from another thread) when `event` is set; at once if it already is.
    Returns a function that cancels the registration (a no-op once the callback has run)."""
    number = next(_numbers)
    with _lock:
        entry = _waiting.get(id(event))
        if entry is None or entry[0] is not event:
            entry = _waiting[id(event)] = (event, {})
            threading.Thread(target=_wait_then_call, args=(event,), daemon=True,
                             name="singleton-stop-waiter").start()
        entry[1][number] = callback

    def cancel() -> None:
        with _lock:
            current = _waiting.get(id(event))
            if current is not None and current[0] is event:
                current[1].pop(number, None)

    return cancel

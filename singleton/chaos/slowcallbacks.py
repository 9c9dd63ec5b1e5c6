"""`python -m singleton.chaos.slowcallbacks run ...`: a clock-steppable `singleton run` whose every
`Singleton` gets slow `on_elected` / `on_stepped_down` callbacks, as a user's would be (flushing a cache,
calling a webhook).

Durations in seconds from $SINGLETON_CHAOS_ON_ELECTED_S and $SINGLETON_CHAOS_ON_STEPPED_DOWN_S (0: none).
A callback is user code: how long it takes must not decide whether the lease survives.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

ON_ELECTED_ENV = "SINGLETON_CHAOS_ON_ELECTED_S"
ON_STEPPED_DOWN_ENV = "SINGLETON_CHAOS_ON_STEPPED_DOWN_S"

log = logging.getLogger("singleton")


def install(elected_s: float, stepped_down_s: float) -> None:
    from singleton.runtime.runner import Singleton

    original_init = Singleton.__init__

    def init(self: Singleton, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)

        def slow_elected(token: int) -> None:
            log.info("chaos: on_elected (token %d) sleeps %.1f s", token, elected_s)
            time.sleep(elected_s)

        def slow_stepped_down(reason: object) -> None:
            log.info("chaos: on_stepped_down (%s) sleeps %.1f s", reason, stepped_down_s)
            time.sleep(stepped_down_s)

        if elected_s > 0:
            self.on_elected(slow_elected)
        if stepped_down_s > 0:
            self.on_stepped_down(slow_stepped_down)

    Singleton.__init__ = init  # type: ignore[method-assign]


def main() -> int:
    install(float(os.environ.get(ON_ELECTED_ENV, "0")), float(os.environ.get(ON_STEPPED_DOWN_ENV, "0")))
    from singleton.chaos.clockstep import main as clockstep_main

    return clockstep_main()


if __name__ == "__main__":
    sys.exit(main())

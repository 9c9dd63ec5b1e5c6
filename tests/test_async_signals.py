"""SIGTERM/SIGINT under asyncio: `await app.run_async()` and `async with app:` stop gracefully (handover, lease
revoked, exit 0) on the first signal, leave a handler the app installed alone, and put back what was there."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from singleton import Config, MemoryBackend, Singleton, TickContext
from singleton.backends.etcd import EtcdBackend
from singleton.core.records import decode_leader
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.testing.processes import default_sigint
from singleton.testing.recorder import wait_for

SCRIPT = textwrap.dedent("""
    import asyncio, logging, sys
    from singleton import Config, Singleton
    from singleton.core.timings import FAST

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    endpoints, name, form = sys.argv[1:4]
    app = Singleton(Config(endpoints=endpoints, name=name, replica_id="sig", **FAST.config_kwargs()),
                    lambda ctx: None)

    async def main() -> None:
        if form == "run_async":
            await app.run_async()
        else:
            async with app:
                await asyncio.Event().wait()  # the app's own work, for ever
        print("after the replica", flush=True)

    asyncio.run(main())
""")


def config(replica: str) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="mem", replica_id=replica,  # type: ignore[arg-type]
                  **FAST.config_kwargs())


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdBackend]:
    backend = EtcdBackend(etcd.endpoints)
    yield backend
    backend.close()


@pytest.mark.parametrize("form", ["run_async", "async_with"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_the_first_signal_stops_gracefully(form: str, signum: int, etcd: EtcdCluster, client: EtcdBackend,
                                           name: str, tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    key = f"/singleton/{name}/leader"
    proc = subprocess.Popen([sys.executable, str(script), etcd.endpoints_arg, name, form],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        def leading() -> Any:
            kv, _ = client.get(key, 2.0)
            record = decode_leader(kv.value) if kv else None
            return kv if record is not None and record.replica_id == "sig" else None

        wait_for(leading, 20, "the replica to lead")
        lease_id = leading().lease_id
        proc.send_signal(signum)
        try:
            # Generous: the bound is that it stops at all (graceful stop <= stop timeout + grace), on a busy machine.
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"no exit within 60 s of {signal.Signals(signum).name}; stderr:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"received {signal.Signals(signum).name}: stopping gracefully" in err
    assert "replica sig stopped" in err and "after the replica" in out
    assert client.get(key, 2.0)[0] is None  # handed over: the key is deleted...
    assert client.lease_remaining_s(lease_id, 2.0) == -1  # ...and the lease revoked, not left to lapse


def _run_in_process(main: Any) -> None:
    """asyncio.run in pytest's main thread, with SIGTERM at its default meanwhile."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, before)


def test_run_async_takes_unclaimed_signals_and_puts_them_back() -> None:
    seen: dict[str, Any] = {}
    ticked = threading.Event()

    def job(_ctx: TickContext) -> None:
        ticked.set()

    async def main() -> None:
        runner_sigint = signal.getsignal(signal.SIGINT)  # asyncio.run's own
        app = Singleton(config("a"), job, backend=MemoryBackend())
        task = asyncio.create_task(app.run_async())
        await asyncio.to_thread(ticked.wait, 10)
        seen["during"] = signal.getsignal(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # handled on the loop: a graceful stop, run_async returns
        await asyncio.wait_for(task, 15)
        seen["after"] = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT) is runner_sigint)
        seen["stopped"] = app.role.value

    _run_in_process(main)
    assert seen["during"] is not signal.SIG_DFL
    assert seen["after"] == (signal.SIG_DFL, True)
    assert seen["stopped"] == "stopped"


@pytest.mark.parametrize("form", ["run_async", "async_with"])
def test_a_handler_the_app_installed_is_left_alone(form: str) -> None:
    ticked = threading.Event()
    seen: list[object] = []

    def apps_own(_signum: int, _frame: object) -> None:
        pass

    async def main() -> None:
        signal.signal(signal.SIGTERM, apps_own)
        app = Singleton(config("b"), lambda _ctx: ticked.set(), backend=MemoryBackend())
        if form == "run_async":
            task = asyncio.create_task(app.run_async())
            await asyncio.to_thread(ticked.wait, 10)
            seen.append(signal.getsignal(signal.SIGTERM))
            app.stop()
            await asyncio.wait_for(task, 15)
        else:
            async with app:
                await asyncio.to_thread(ticked.wait, 10)
                seen.append(signal.getsignal(signal.SIGTERM))
        seen.append(signal.getsignal(signal.SIGTERM))

    _run_in_process(main)
    assert seen == [apps_own, apps_own]

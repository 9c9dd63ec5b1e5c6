"""Embedding in an asyncio web app: a real uvicorn serving a FastAPI app whose lifespan runs a replica on real etcd.

The job is `async def` and uses what the app made at start-up (an httpx.AsyncClient, an asyncio.Lock): it must run
on the app's own event loop, and the app's shutdown must hand over gracefully.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from singleton import Config, Singleton, TickContext
from singleton.backends.etcd import EtcdBackend
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.testing.recorder import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_app(config: Config, port: int, ticks: list[tuple[int, int]], errors: list[BaseException]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")  # bound to this loop
        lock = asyncio.Lock()  # shared with the request handlers
        replica = Singleton(config)

        @replica.job
        async def tick(ctx: TickContext) -> None:
            try:
                async with lock:
                    response = await client.get("/ping")
                ticks.append((ctx.slot, response.status_code))
            except BaseException as exc:
                errors.append(exc)
                raise

        async def app_traffic() -> None:
            """The app's own use of the same client and lock, on its loop, while the job uses them too."""
            while True:
                try:
                    async with lock:
                        await client.get("/ping")
                        await asyncio.sleep(0.01)  # hold the lock a little, so the job has to wait for it
                except httpx.TransportError:
                    pass  # the server is not serving yet during start-up
                await asyncio.sleep(0.01)

        traffic = asyncio.create_task(app_traffic())
        async with replica:  # the documented pattern: the replica lives as long as the app
            app.state.replica = replica
            yield
        traffic.cancel()
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def test_a_fastapi_app_runs_its_async_job_on_its_own_loop_and_hands_over_on_shutdown(etcd: EtcdCluster,
                                                                                      name: str) -> None:
    port = free_port()
    config = Config(endpoints=etcd.endpoints, name=name, replica_id="web", **FAST.config_kwargs())
    ticks: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    server = uvicorn.Server(uvicorn.Config(build_app(config, port, ticks, errors), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    try:
        wait_for(lambda: len(ticks) >= 2 or errors, 15, "two ticks of the app's job")
        assert not errors, errors
        assert all(status == 200 for _, status in ticks)
    finally:
        server.should_exit = True
        thread.join(20)
    assert not thread.is_alive()
    backend = EtcdBackend(config.endpoints)
    try:
        kv, _ = backend.get(config.leader_key, 2.0)
        handover, _ = backend.get(config.handover_key, 2.0)
    finally:
        backend.close()
    assert kv is None, "the app's shutdown left the leader key behind"
    assert handover is not None  # it handed over gracefully, telling the next leader its last slot

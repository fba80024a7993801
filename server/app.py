"""The labeling server process: gRPC (with health and reflection), /metrics, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Callable

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.proto.v1 import labeler_pb2_grpc as pb_grpc
from pseudostream.server.allocator import keep_freed_memory
from pseudostream.server.auth import AuthInterceptor
from pseudostream.server.config import ServiceConfig
from pseudostream.server.core import LabelingCore
from pseudostream.server.interceptors import ErrorMappingInterceptor, quiet_unretrieved_aborts
from pseudostream.server.metrics import ServiceMetrics, serve_metrics
from pseudostream.server.security import TokenStore, server_credentials
from pseudostream.server.service import LabelerServicer

__all__ = ["LabelingServer", "serve_forever"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Labeler"].full_name


class LabelingServer:
    """Runs a LabelingCore behind grpc.aio. ``async with LabelingServer(cfg) as s: s.address``."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.core = LabelingCore(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self._server: aio.Server | None = None
        self._metrics_http: object | None = None
        self.port = 0
        self.metrics_port: int | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Start the core, then listen; health turns SERVING once everything is up."""
        quiet_unretrieved_aborts(asyncio.get_running_loop())
        await self.core.start()
        options = [
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            ("grpc.max_send_message_length", self.config.max_message_bytes),
        ]
        security = self.config.security
        credentials = server_credentials(security.tls) if security.tls is not None else None
        interceptors: list[aio.ServerInterceptor] = [ErrorMappingInterceptor(self.metrics)]
        tokens = TokenStore.load(security)
        if tokens is not None:  # inside error mapping: its auth errors get status codes + metrics
            teacher_topics: dict[str, list[str]] = {}
            for name, topic in self.config.topics.items():
                teacher_topics.setdefault(topic.teacher, []).append(name)
            interceptors.append(AuthInterceptor(tokens, teacher_topics))
        server = aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_LabelerServicer_to_server(LabelerServicer(self.core), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        bind = f"{self.config.host}:{self.config.port}"
        self.port = (server.add_secure_port(bind, credentials) if credentials is not None
                     else server.add_insecure_port(bind))
        await server.start()
        self._server = server
        if self.config.metrics_port is not None:
            self._metrics_http, _, self.metrics_port = serve_metrics(
                self.metrics, self.config.metrics_host, self.config.metrics_port)
        await self._set_health(True)
        self._watch = asyncio.create_task(self._watch_teachers(), name="teacher-health")
        log.info("labeling service on %s (%s, %s; metrics port %s)", self.address,
                 "plaintext" if security.tls is None else
                 "mutual TLS" if security.tls.client_ca_file is not None else "TLS",
                 "bearer tokens required" if tokens is not None else "no auth", self.metrics_port)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_teachers(self, interval_s: float = 1.0) -> None:
        """Readiness follows the teachers: NOT_SERVING while any backend is down."""
        serving = True
        while True:
            await asyncio.sleep(interval_s)
            ready = all([await b.ready() for b in self.core.backends.values()])
            if ready != serving:
                log.warning("teachers %s: health %s", "ready" if ready else "down",
                            "SERVING" if ready else "NOT_SERVING")
                await self._set_health(ready)
                serving = ready

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new RPCs, let in-flight ones finish within ``grace``, drain, checkpoint."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        self.core.draining.set()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_s if grace is None else grace)
            self._server = None
        await self.core.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()  # type: ignore[attr-defined]
            self._metrics_http.server_close()  # type: ignore[attr-defined]
            self._metrics_http = None

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> "LabelingServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(config: ServiceConfig,
                        on_ready: Callable[[LabelingServer], None] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully; ``on_ready`` runs once listening."""
    # Handlers first: a SIGTERM right after on_ready announced readiness (or during start) must
    # take the graceful path, not the default action that kills the process mid-write.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("allocator: %s", keep_freed_memory(config.keep_freed_memory_mib << 20))  # process-wide
    server = LabelingServer(config)
    await server.start()
    # What start-up made (modules, the teachers' sessions, gRPC stubs: about 70k objects the
    # collector tracks) lives as long as the process. Frozen, a full collection skips it: one
    # took 21 ms over all of it, holding the event loop; about 2k objects are left to walk.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    log.info("shutting down")
    await server.stop()

"""The gRPC servicer: proto -> validated numpy -> core -> proto. Nothing else lives here."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import AsyncIterator

import grpc
from grpc import aio

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.proto.v1 import labeler_pb2_grpc as pb_grpc
from pseudostream.server import admin_codec, codec
from pseudostream.server.core import LabelingCore
from pseudostream.server.errors import InvalidInput, Overloaded, PseudostreamError, ShuttingDown
from pseudostream.server.limits import RateLimiter, client_of

__all__ = ["LabelerServicer"]

log = logging.getLogger(__name__)

_DEFAULT_SUBSCRIBE_BATCH = 256
_SUBSCRIBE_POLL_S = 0.5


class _StreamIdle(PseudostreamError):
    """A Label stream sent no request within ``stream_idle_timeout_s``."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


def _discard_outcome(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a Label request finished after its stream ended: %s", task.exception())


class LabelerServicer(pb_grpc.LabelerServicer):
    """Implements pseudostream.v1.Labeler over a LabelingCore."""

    def __init__(self, core: LabelingCore) -> None:
        self.core = core
        rate = core.config.rate_limit_samples_per_s
        self.limiter = RateLimiter(rate, core.config.rate_limit_burst) if rate else None

    async def Label(self, request_iterator: AsyncIterator[pb.LabelRequest],
                    context: aio.ServicerContext) -> AsyncIterator[pb.LabelResponse]:
        """Requests are validated as they arrive and labeled concurrently (bounded per stream);
        responses go out in request order. A bad request ends the stream with its status after
        the responses to the requests before it."""
        inflight: asyncio.Queue = asyncio.Queue(maxsize=self.core.config.max_inflight_per_stream)
        latency = self.core.metrics.rpc_latency.labels("Label")  # per request: received -> answered
        client = client_of(context.peer())
        reader = asyncio.create_task(self._read_requests(request_iterator, inflight, client))
        try:
            while True:
                item = await inflight.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                request, task, received = item
                outcome = await task
                yield codec.encode_label_response(request.request_id, request.ids, outcome)
                latency.observe(time.perf_counter() - received)
            await reader
        finally:
            reader.cancel()
            # Requests still in flight keep running (their accepted labels reach the log); their
            # outcome has no reader any more, so retrieve it to keep the event loop quiet.
            while not inflight.empty():
                item = inflight.get_nowait()
                if isinstance(item, tuple):
                    item[1].add_done_callback(_discard_outcome)

    async def _read_requests(self, requests: AsyncIterator[pb.LabelRequest], out: asyncio.Queue,
                             client: str) -> None:
        config = self.core.config
        idle_s = config.stream_idle_timeout_s
        incoming = requests.__aiter__()
        draining = asyncio.ensure_future(self.core.draining.wait())
        try:
            while True:
                step = asyncio.ensure_future(incoming.__anext__())
                done, _ = await asyncio.wait({step, draining}, timeout=idle_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    if draining in done:  # answer what is in flight, then end the stream
                        raise ShuttingDown("the service is shutting down; resend requests that "
                                           "got no answer (to another replica)", retry_after_s=1.0)
                    raise _StreamIdle(f"no request for {idle_s:g} s; open a new stream when you "
                                      "have samples")
                try:
                    request = step.result()
                except StopAsyncIteration:
                    break
                received = time.perf_counter()
                topic = self.core.topic(request.topic)
                teacher = self.core.backends[topic.config.teacher].metadata
                parsed = codec.decode_label_request(request, teacher, topic.config.max_sample_bytes,
                                                    topic.config.audit_label_key,
                                                    max_request_samples=config.max_request_samples,
                                                    nonfinite=topic.config.nonfinite)
                if self.limiter is not None and (wait := self.limiter.take(client, len(parsed.ids))):
                    raise Overloaded(f"client {client!r} is over its rate limit of "
                                     f"{self.limiter.rate:g} samples/s; retry in {wait:.2f} s",
                                     retry_after_s=wait)
                trusted = topic.config.trusted_producers
                parsed.trusted = trusted is None or client in trusted or "*" in trusted
                # Labeling runs even if this client goes away: accepted labels reach the log.
                await out.put((parsed, asyncio.ensure_future(self.core.label(parsed)), received))
        except PseudostreamError as exc:
            await out.put(exc)
            return
        except Exception as exc:  # the client's half of the stream broke (cancel, reset)
            log.debug("Label stream ended while reading: %s", exc)
            await out.put(None)
            return
        finally:
            draining.cancel()
        await out.put(None)

    async def Subscribe(self, request: pb.SubscribeRequest,
                        context: aio.ServicerContext) -> AsyncIterator[pb.PseudoLabelBatch]:
        """Deliver the topic's labels to (group, consumer) until the client leaves; its pending
        records are released for the group's other consumers when it does."""
        self.core.topic(request.topic)
        if not request.group or not request.consumer:
            raise InvalidInput("subscribe: group and consumer must be non-empty names")
        self.core.watch_group(request.topic, request.group)
        label_log = self.core.log
        assert label_log is not None
        max_batch = request.max_batch or _DEFAULT_SUBSCRIBE_BATCH
        read = label_log.read_columns if request.columnar else label_log.read
        limit = self.core.config.max_message_bytes
        try:
            while not context.done() and not self.core.draining.is_set():
                got = await read(request.topic, request.group, request.consumer, max_batch,
                                 wait_s=_SUBSCRIBE_POLL_S, samples=request.include_samples)
                # A batch whose message would pass the message size limit goes in parts.
                if request.columnar:
                    for columns in got:
                        for part in codec.split_to_fit(columns, codec.columns_bound, limit):
                            yield codec.encode_columns(request.topic, part)
                elif got:
                    bound = functools.partial(codec.records_bound, include_samples=request.include_samples)
                    for records in codec.split_to_fit(got, bound, limit):
                        yield codec.encode_records(request.topic, records, request.include_samples)
        finally:
            try:
                await asyncio.shield(label_log.release(request.topic, request.group, request.consumer))
            except Exception as exc:  # log closed at shutdown: restart makes them deliverable
                log.debug("release after Subscribe ended failed: %s", exc)

    async def Ack(self, request: pb.AckRequest, context: aio.ServicerContext) -> pb.AckResponse:
        acked, committed = await self.core.ack(request.topic, request.group, list(request.offsets))
        return pb.AckResponse(acked=acked, committed_offset=committed)

    async def Feedback(self, request: pb.FeedbackRequest, context: aio.ServicerContext) -> pb.FeedbackResponse:
        if len(request.audit_offsets) != len(request.audit_labels):
            raise InvalidInput(f"feedback: {len(request.audit_offsets)} audit offsets but "
                               f"{len(request.audit_labels)} audit labels; send one label per offset")
        key, audited, correct = await self.core.feedback(
            request.topic, request.group, request.consumer, list(request.offsets),
            request.loss_before, request.loss_after,
            dict(zip(request.audit_offsets, request.audit_labels)), request.step)
        return pb.FeedbackResponse(key=key, audited=audited, audit_correct=correct)

    async def PublishTeacher(self, request: pb.PublishTeacherRequest,
                             context: aio.ServicerContext) -> pb.TeacherVersion:
        version = await self.core.publish(request.teacher, request.model_dir,
                                          proposer=client_of(context.peer()))
        return pb.TeacherVersion(teacher=request.teacher, version=version,
                                 versions=self.core.backend(request.teacher).versions)

    async def RollbackTeacher(self, request: pb.RollbackTeacherRequest,
                              context: aio.ServicerContext) -> pb.TeacherVersion:
        version = await self.core.rollback(request.teacher, request.version,
                                           proposer=client_of(context.peer()))
        return pb.TeacherVersion(teacher=request.teacher, version=version,
                                 versions=self.core.backend(request.teacher).versions)

    async def ProposeTeacher(self, request: pb.ProposeTeacherRequest,
                             context: aio.ServicerContext) -> pb.ProposalResult:
        out = await self.core.promoter.propose(
            request.topic, request.model_onnx, trained_from=request.trained_from_offset,
            trained_to=request.trained_to_offset, proposer=client_of(context.peer()), note=request.note)
        return pb.ProposalResult(
            promoted=out.promoted, version=out.version, reason=out.reason,
            candidate=admin_codec.audit_figures(out.candidate), current=admin_codec.audit_figures(out.current),
            candidate_id=out.candidate_id, ema=out.ema)

    async def TeacherHistory(self, request: pb.TeacherHistoryRequest,
                             context: aio.ServicerContext) -> pb.TeacherHistoryResponse:
        records = await self.core.history(request.teacher)
        return pb.TeacherHistoryResponse(
            teacher=request.teacher, served_version=self.core.backend(request.teacher).metadata.version,
            records=[admin_codec.version_record(r) for r in records])

    async def GetTopic(self, request: pb.GetTopicRequest, context: aio.ServicerContext) -> pb.TopicState:
        snap = await self.core.snapshot(request.topic, list(request.groups))
        return pb.TopicState(**vars(snap))

"""Prometheus metrics, one registry per app (several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """Request counts by endpoint and status, latency, batch sizes, OOD rate.

    Every label takes values from a fixed set (endpoints and methods outside it are "other"),
    so no client can grow the number of series.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tympan_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("tympan_request_latency_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_requests = Histogram("tympan_batch_requests", "requests served by one forward pass",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_windows = Histogram("tympan_batch_windows", "model windows in one forward pass",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("tympan_inference_seconds", "time of one batched forward pass",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("tympan_predictions", "recordings predicted", registry=r)
        self.ood = Counter("tympan_ood_predictions", "recordings flagged out of distribution "
                           "(OOD rate = tympan_ood_predictions_total / tympan_predictions_total)", registry=r)
        self.uncertain = Counter("tympan_uncertain_predictions", "recordings flagged uncertain", registry=r)
        self.inline = Counter("tympan_inline_requests", "requests run on the event loop's thread (the idle "
                              "fast path, TYMPAN_INLINE_MAX_SECONDS)", registry=r)
        self.rejected = Counter("tympan_rejected_inputs", "requests refused, by error code",
                                ["code"], registry=r)
        self.queue = Gauge("tympan_batch_queue_depth", "requests waiting for the model", registry=r)
        self.ready = Gauge("tympan_ready", "1 once the model is loaded and warmed", registry=r)
        self.active = Gauge("tympan_active_requests", "HTTP requests inside the app now (receiving, "
                            "waiting or running)", registry=r)
        #: the same count as a plain int (read on every request: the inline fast path's "idle")
        self.active_requests = 0
        self.body_bytes = Gauge("tympan_inflight_body_bytes", "request-body bytes held by requests in flight "
                                "(admission control budget: TYMPAN_MAX_INFLIGHT_BODY_BYTES)", registry=r)

        self.streams = Counter("tympan_streams", "WebSocket /stream connections accepted", registry=r)
        self.streams_active = Gauge("tympan_streams_active", "WebSocket /stream connections open now", registry=r)
        self.stream_windows = Counter("tympan_stream_windows", "model windows classified for /stream", registry=r)
        self.stream_events = Counter("tympan_stream_events", "events sent on /stream", registry=r)
        self.stream_closes = Counter("tympan_stream_closes", "/stream connections ended, by reason (a fixed set)",
                                     ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

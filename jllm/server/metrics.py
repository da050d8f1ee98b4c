"""Prometheus metrics under vLLM's names with a ``jllm:`` prefix, so existing dashboards need one rename.

Engine counters (running, waiting, KV usage, prefix cache, preemptions, tokens) are read from the engine's latest
snapshot at scrape time; latencies are observed per request as its outputs reach the server.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jllm.async_engine import EngineSnapshot
from jllm.outputs import RequestOutput

logger = logging.getLogger(__name__)

# vLLM's buckets: requests span milliseconds (a cached short prompt) to minutes (a long generation).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)


class _EngineCollector(Collector):
    """Turns the engine's latest snapshot into gauges and counters on every scrape."""

    def __init__(self, snapshot: Callable[[], EngineSnapshot | None], model_name: str) -> None:
        self._snapshot = snapshot
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:  # still loading
            return
        gauges = [
            ("jllm:num_requests_running", "Requests in the running batch.", snap.num_running),
            ("jllm:num_requests_waiting", "Requests waiting for a slot.", snap.num_waiting),
            ("jllm:kv_cache_usage_perc", "Fraction of KV-cache pages in use (1 = full).", snap.kv_cache_usage),
            ("jllm:kv_cache_pages_in_use", "KV-cache pages held by unfinished sequences.", snap.num_pages_in_use),
        ]
        counters = [
            ("jllm:num_preemptions", "Sequences preempted for KV-cache pages.", snap.num_preemptions),
            ("jllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", snap.prefix_cache_queries),
            ("jllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", snap.prefix_cache_hits),
            ("jllm:prompt_tokens", "Prompt tokens processed.", snap.prompt_tokens),
            ("jllm:generation_tokens", "Tokens generated.", snap.generation_tokens),
        ]
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], value)
            yield family
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], value)
            yield family


class ServerMetrics:
    """One registry per app (not the process-global one), so several servers can live in one process."""

    def __init__(self, model_name: str, snapshot: Callable[[], EngineSnapshot | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(snapshot, model_name))
        self.ttft = Histogram(
            "jllm:time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.inter_token_latency = Histogram(
            "jllm:inter_token_latency_seconds",
            "Time between consecutive outputs of one request.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self.e2e_latency = Histogram(
            "jllm:e2e_request_latency_seconds",
            "Time from admission to the last output.",
            ["model_name"],
            buckets=E2E_BUCKETS,
            registry=self.registry,
        ).labels(model_name)
        self._finished = Counter(
            "jllm:request_success",
            "Requests finished, by finish reason.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self._model_name = model_name

    def request_finished(self, reason: str) -> None:
        self._finished.labels(self._model_name, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One engine request's latencies, observed as its outputs arrive; logs the request once it ends."""

    def __init__(self, metrics: ServerMetrics, request_id: str) -> None:
        self.metrics = metrics
        self.request_id = request_id
        self.start = time.monotonic()
        self.first_token: float | None = None
        self.last_token = self.start
        self.num_tokens = 0
        self.num_prompt_tokens = 0
        self.reason: str | None = None  # the first sample's finish reason, once it has one
        self.done = False

    def observe(self, output: RequestOutput) -> None:
        """``output`` holds only what is new since the last one (``RequestOutputKind.DELTA``)."""
        now = time.monotonic()
        num_new = sum(len(c.token_ids) for c in output.outputs)
        self.num_prompt_tokens = len(output.prompt_token_ids)
        if num_new:
            if self.first_token is None:
                self.first_token = now
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.inter_token_latency.observe(now - self.last_token)
            self.last_token = now
            self.num_tokens += num_new
        self.reason = next((c.finish_reason for c in output.outputs if c.index == 0), None) or self.reason
        if output.finished:
            self.finish(self.reason or "abort")

    def finish(self, reason: str) -> None:
        """Records the end (a finish reason, or "abort" when the client left first); later calls do nothing."""
        if self.done:
            return
        self.done = True
        e2e = time.monotonic() - self.start
        self.metrics.e2e_latency.observe(e2e)
        self.metrics.request_finished(reason)
        ttft = f"{self.first_token - self.start:.3f} s" if self.first_token is not None else "-"
        logger.info(
            "request %s finished (%s): %d prompt + %d generated tokens, first token %s, total %.3f s",
            self.request_id,
            reason,
            self.num_prompt_tokens,
            self.num_tokens,
            ttft,
            e2e,
        )

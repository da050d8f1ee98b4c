"""Prometheus metrics under vLLM's names with a ``jllm:`` prefix, so existing dashboards need one rename.

Engine counters (running, waiting, KV usage, prefix cache, preemptions, tokens) are read from each served model's
latest engine snapshot at scrape time; latencies are observed per request as its outputs reach the server. Every
metric carries the ``model_name`` label (a model's first served name).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
    """Turns each served model's latest engine snapshot into gauges and counters on every scrape."""

    def __init__(self, snapshots: Callable[[], dict[str, EngineSnapshot]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        snaps = self._snapshots()  # model name -> snapshot; empty while the models load
        if not snaps:
            return
        gauges = [
            ("jllm:num_requests_running", "Requests in the running batch.", "num_running"),
            ("jllm:num_requests_waiting", "Requests waiting for a slot.", "num_waiting"),
            ("jllm:kv_cache_usage_perc", "Fraction of KV-cache pages in use (1 = full).", "kv_cache_usage"),
            ("jllm:kv_cache_pages_in_use", "KV-cache pages held by unfinished sequences.", "num_pages_in_use"),
        ]
        counters = [
            ("jllm:num_preemptions", "Sequences preempted for KV-cache pages.", "num_preemptions"),
            ("jllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", "prefix_cache_queries"),
            ("jllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", "prefix_cache_hits"),
            ("jllm:prompt_tokens", "Prompt tokens processed.", "prompt_tokens"),
            ("jllm:generation_tokens", "Tokens generated.", "generation_tokens"),
            (
                "jllm:spec_decode_num_draft_tokens",
                "Speculative decoding's draft tokens verified.",
                "spec_decode_num_draft_tokens",
            ),
            (
                "jllm:spec_decode_num_accepted_tokens",
                "Speculative decoding's draft tokens accepted.",
                "spec_decode_num_accepted_tokens",
            ),
            (
                "jllm:programs_compiled_after_startup",
                "Step and pooling programs compiled after warm-up (each stalls every stream while it compiles; 0 is "
                "the goal).",
                "compilations_after_startup",
            ),
        ]
        for kind, table in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, doc, field in table:
                family = kind(name, doc, labels=["model_name"])
                for model_name, snap in snaps.items():
                    family.add_metric([model_name], getattr(snap, field))
                yield family


@dataclass(frozen=True)
class ModelMetrics:
    """One model's request latencies and outcomes: the server's histograms under its ``model_name`` label."""

    model_name: str
    ttft: Histogram
    inter_token_latency: Histogram
    e2e_latency: Histogram
    _finished: Counter

    def request_finished(self, reason: str) -> None:
        self._finished.labels(self.model_name, reason).inc()


class ServerMetrics:
    """One registry per app (not the process-global one), so several servers can live in one process. Every metric
    carries the ``model_name`` label; a model's series stay after it is unloaded (counters do not go back)."""

    def __init__(self, snapshots: Callable[[], dict[str, EngineSnapshot]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(snapshots))
        self._ttft = Histogram(
            "jllm:time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._inter_token_latency = Histogram(
            "jllm:inter_token_latency_seconds",
            "Time between consecutive outputs of one request.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self._e2e_latency = Histogram(
            "jllm:e2e_request_latency_seconds",
            "Time from admission to the last output.",
            ["model_name"],
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        self._finished = Counter(
            "jllm:request_success",
            "Requests finished, by finish reason.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )

    def for_model(self, model_name: str) -> ModelMetrics:
        return ModelMetrics(
            model_name,
            self._ttft.labels(model_name),
            self._inter_token_latency.labels(model_name),
            self._e2e_latency.labels(model_name),
            self._finished,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One engine request's latencies, observed as its outputs arrive; logs the request once it ends."""

    def __init__(self, metrics: ModelMetrics, request_id: str) -> None:
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
        num_new = 0
        for c in output.outputs:  # a loop, not two generators: this runs for every output of every stream
            num_new += len(c.token_ids)
            if c.index == 0 and c.finish_reason:
                self.reason = c.finish_reason  # the first sample's, once it has one
        self.num_prompt_tokens = len(output.prompt_token_ids)
        if num_new:
            if self.first_token is None:
                self.first_token = now
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.inter_token_latency.observe(now - self.last_token)
            self.last_token = now
            self.num_tokens += num_new
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

"""Prometheus metrics of the server, named as vLLM names them under a ``corral:`` prefix.

Two sources feed them. The engine's `EngineStats` (queues, KV cache, cumulative
token and cache counters) is read at scrape time by a custom collector, so the
numbers are never stale and nothing runs between scrapes. Per-request histograms
(time to first token, time per output token, end-to-end latency) and the count of
finished requests by reason are recorded by the handlers when a request ends;
a request whose client went away counts under ``finished_reason="abort"``.

Each `ServerMetrics` owns its registry, so that several apps in one process (tests)
do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.outputs import RequestOutput
from corral.stats import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


_GAUGES = (
    ("num_requests_running", "Sequences running on the model.", "num_running"),
    ("num_requests_waiting", "Sequences waiting to be scheduled.", "num_waiting"),
    ("num_requests_swapped", "Sequences swapped out to host memory.", "num_swapped"),
    ("kv_cache_usage_perc", "KV cache usage, 1 = all blocks used.", "kv_cache_usage"),
)
_COUNTERS = (
    ("num_preemptions", "Sequences preempted.", "num_preemptions"),
    (
        "prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache.",
        "prefix_cache_queries",
    ),
    ("prefix_cache_hits", "Prompt tokens found in the prefix cache.", "prefix_cache_hits"),
    ("prompt_tokens", "Prompt tokens computed.", "num_prompt_tokens"),
    ("generation_tokens", "Tokens generated.", "num_generation_tokens"),
)


class EngineStatsCollector(Collector):
    """Turns one `EngineStats` snapshot per scrape into gauges and counters.

    With several data-parallel replicas, each metric has one sample per replica,
    labelled ``replica`` (sum over it for the engine's total). With LoRA, the adapters'
    running and waiting requests too (vLLM's ``lora_requests_info`` and per-adapter
    gauges).
    """

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        model_name: str,
        replica_stats: Callable[[], dict[str, EngineStats]] | None = None,
        lora_names: Callable[[], dict[int, str]] | None = None,
        max_lora: int = 0,
    ) -> None:
        self._stats = stats
        self._replica_stats = replica_stats
        self._model_name = model_name
        self._lora_names = lora_names
        self._max_lora = max_lora

    def collect(self) -> Iterator[Metric]:
        replicas = self._replica_stats() if self._replica_stats is not None else {}
        if len(replicas) > 1:
            label_names = ["model_name", "replica"]
            rows = [([self._model_name, name], stats) for name, stats in replicas.items()]
        else:
            label_names = ["model_name"]
            rows = [([self._model_name], self._stats())]
        for family, specs in ((GaugeMetricFamily, _GAUGES), (CounterMetricFamily, _COUNTERS)):
            for name, doc, field in specs:
                metric = family(f"corral:{name}", doc, labels=label_names)
                for labels, stats in rows:
                    metric.add_metric(labels, float(getattr(stats, field)))
                yield metric
        if self._lora_names is not None:
            yield from self._lora_metrics(rows[0][1], self._lora_names())

    def _lora_metrics(self, stats: EngineStats, names: dict[int, str]) -> Iterator[Metric]:
        def named(counts: dict[int, int]) -> dict[str, int]:
            return {names.get(i, str(i)): n for i, n in sorted(counts.items())}

        running, waiting = named(stats.lora_running), named(stats.lora_waiting)
        # vLLM's lora_requests_info: the adapters in labels, the scrape time as value.
        info = GaugeMetricFamily(
            "corral:lora_requests_info",
            "Running and waiting LoRA adapters (comma-separated names) and max_loras.",
            labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
        )
        info.add_metric([",".join(running), ",".join(waiting), str(self._max_lora)], time.time())
        yield info
        for kind, counts in (("running", running), ("waiting", waiting)):
            gauge = GaugeMetricFamily(
                f"corral:lora_requests_{kind}",
                f"Sequences {kind} per LoRA adapter.",
                labels=["model_name", "lora_name"],
            )
            for lora_name in sorted({*names.values(), *counts}):
                gauge.add_metric([self._model_name, lora_name], float(counts.get(lora_name, 0)))
            yield gauge


class ServerMetrics:
    """The server's registry: engine gauges plus per-request histograms.

    Args:
        stats: Returns the engine's current `EngineStats` (called at each scrape).
        model_name: The served model name, the ``model_name`` label of every metric.
        replica_stats: Returns each data-parallel replica's `EngineStats` by name; with
            more than one, the engine metrics are per replica (label ``replica``).
        lora_names: With LoRA: returns the adapters' names by id (per-adapter gauges).
        max_lora: ``max_loras``, reported by ``corral:lora_requests_info``.
    """

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        model_name: str,
        replica_stats: Callable[[], dict[str, EngineStats]] | None = None,
        lora_names: Callable[[], dict[int, str]] | None = None,
        max_lora: int = 0,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(
            EngineStatsCollector(stats, model_name, replica_stats, lora_names, max_lora)
        )
        self._model_name = model_name
        labels = ["model_name"]
        self.request_success = Counter(
            "corral:request_success",
            "Finished requests, by finish reason of their first choice ('abort' for requests "
            "whose client left or that the server gave up on).",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "corral:time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "corral:time_per_output_token_seconds",
            "Mean time between generated tokens of a request, after the first.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "corral:e2e_request_latency_seconds",
            "Time from arrival to the last token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Histogram(
            "corral:request_prompt_tokens",
            "Prompt tokens per request.",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.generation_tokens = Histogram(
            "corral:request_generation_tokens",
            "Generated tokens per request (all its returned choices).",
            labels,
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )

    def observe_finished(self, output: RequestOutput) -> None:
        """Record a request's final output."""
        name = self._model_name
        reason = output.outputs[0].finish_reason if output.outputs else None
        self.request_success.labels(name, reason or "abort").inc()
        self.prompt_tokens.labels(name).observe(len(output.prompt_token_ids))
        num_generated = sum(len(c.token_ids) for c in output.outputs)
        self.generation_tokens.labels(name).observe(num_generated)
        timing = output.metrics
        if timing is None:
            return
        if timing.first_token_time is not None:
            self.ttft.labels(name).observe(timing.first_token_time - timing.arrival_time)
        end = timing.finished_time or timing.last_token_time or time.time()
        self.e2e.labels(name).observe(end - timing.arrival_time)
        longest = max((len(c.token_ids) for c in output.outputs), default=0)
        if (
            timing.first_token_time is not None
            and timing.last_token_time is not None
            and longest > 1
        ):
            per_token = (timing.last_token_time - timing.first_token_time) / (longest - 1)
            self.tpot.labels(name).observe(per_token)

    def observe_aborted(self) -> None:
        """Record a request that ended without a final output (its client left)."""
        self.request_success.labels(self._model_name, "abort").inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

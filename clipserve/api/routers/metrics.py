"""``GET /metrics``: the same numbers as ``/v1/stats`` in the Prometheus text format."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from clipserve.api.schemas import StatsPublic

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def get_metrics(request: Request) -> Response:
    """Prometheus exposition of this app's own registry (no process-global metrics)."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


class ServiceCollector:
    """Reads ``ServiceState.stats()`` at scrape time (registered on the app's own registry)."""

    def __init__(self, stats_fn: Callable[[], StatsPublic]) -> None:
        self._stats_fn = stats_fn

    def describe(self) -> list[Metric]:
        """Nothing to pre-register (the registry is private to one app, so no name clashes)."""
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._stats_fn()
        yield GaugeMetricFamily("clipserve_uptime_seconds", "Seconds since the service started.", stats.uptime_seconds)
        for name, value, doc in (
            ("clipserve_clips_delivered", stats.clips_delivered_total, "Clips delivered to consumers."),
            ("clipserve_videos_delivered", stats.videos_delivered_total, "Videos delivered to consumers."),
            ("clipserve_batches_delivered", stats.batches_delivered_total, "Batches delivered to consumers."),
            ("clipserve_decode_errors", stats.decode_errors_total, "Videos that failed to decode."),
            ("clipserve_substitutions", stats.substitutions_total, "Videos replaced in a batch after a failure."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        for name, gauge, doc in (
            ("clipserve_clips_per_second", stats.last_10_seconds.clips_per_second, "Clips/s over the last 10 s."),
            ("clipserve_videos_per_second", stats.last_10_seconds.videos_per_second, "Videos/s over the last 10 s."),
            ("clipserve_consumers", len(stats.consumers), "Attached consumers."),
            ("clipserve_ring_slots_taken", stats.ring_slots_taken, "Ring slots holding an unreleased batch."),
            ("clipserve_ring_slots", stats.ring_slots_total, "Ring slots of all attached consumers."),
        ):
            yield GaugeMetricFamily(name, doc, value=gauge)
        stages = CounterMetricFamily("clipserve_stage_seconds", "Seconds spent per producer stage.", labels=["stage"])
        for stage, seconds in sorted(stats.stage_seconds_total.items()):
            stages.add_metric([stage], seconds)
        yield stages

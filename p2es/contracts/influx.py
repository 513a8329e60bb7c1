"""InfluxDB measurement schemas: what p2es writes (database / bucket ``p2es``).

Each :class:`Measurement` names its tags and fields once; the sink's serializers, the engine,
the alert service and the dashboards' queries use these objects (tests check every dashboard
query against them).  Timestamps are integer nanoseconds derived from the device ``t0`` (ECG,
PPG, vitals), the event time (alerts) or the wall clock (pipeline health).  NaN / None fields
are omitted; a point without any field is not written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2es.contracts.vitals import UNITS as VITALS_UNITS
from p2es.contracts.vitals import VITALS_METRICS
from p2es.leads import LEADS

__all__ = ["Measurement", "ECG", "PPG", "VITALS", "ALERTS", "PIPELINE", "MEASUREMENTS"]


@dataclass(frozen=True)
class Measurement:
    name: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    description: str
    units: tuple[tuple[str, str], ...] = ()

    def check_fields(self, names: Iterable[str]) -> None:
        """Raise ``ValueError`` on a field this measurement does not declare."""
        unknown = sorted(set(names) - set(self.fields))
        if unknown:
            raise ValueError(f"{self.name}: undeclared field(s) {', '.join(unknown)}")


ECG = Measurement(
    "ecg",
    ("patient",),
    tuple(LEADS),
    "reconstructed 12-lead ECG (mV), one point per sample at the model rate (128 Hz); a sample "
    "written again (window overlap, replay) overwrites the same point",
    tuple((lead, "mV") for lead in LEADS),
)
PPG = Measurement(
    "ppg",
    ("patient",),
    ("value",),
    "the resampled PPG the model saw (device units), one point per sample",
)
VITALS = Measurement(
    "vitals",
    ("patient",),
    VITALS_METRICS,
    "one point per reconstructed window, stamped at the window start (p2es.contracts.vitals)",
    tuple(VITALS_UNITS.items()),
)
ALERTS = Measurement(
    "alerts",
    ("patient", "rule", "priority"),
    ("state", "value", "message"),
    "one point per alert event (firing, repeat, resolved, acknowledged)",
)
PIPELINE = Measurement(
    "pipeline",
    ("instance",),
    (
        "windows_total",
        "windows_per_s",
        "patients_active",
        "batch_size_mean",
        "queue_ingest",
        "queue_batcher",
        "latency_e2e_p50_s",
        "latency_e2e_p95_s",
        "latency_compute_p50_s",
        "latency_queue_p50_s",
        "messages_in_total",
        "deadletters_total",
        "windows_dropped_total",
        "points_written_total",
        "sink_deadletter_batches_total",
        "spool_batches",
        "spool_bytes",
        "influx_down",
        "errors_total",
        "vitals_mqtt_dropped_total",
        "vitals_mqtt_failed_total",
        "journal_rebuilt_patients",
        "journal_rebuilt_s_min",
        "journal_errors_total",
    ),
    "engine health every health_interval_s, tag instance = the engine's client id",
)

MEASUREMENTS: dict[str, Measurement] = {m.name: m for m in (ECG, PPG, VITALS, ALERTS, PIPELINE)}

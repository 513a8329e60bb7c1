"""InfluxDB sink: line-protocol serializer, batching/retrying writer, crash-safe spool.

The measurements it writes are declared in :mod:`p2es.contracts.influx`.
"""

from .lineprotocol import (
    ALERTS_MEASUREMENT,
    ECG_MEASUREMENT,
    PPG_MEASUREMENT,
    VITALS_MEASUREMENT,
    Point,
    alert_line,
    ecg_lines,
    escape_field_key,
    escape_measurement,
    escape_tag_value,
    format_field_value,
    line,
    ppg_lines,
    sample_times_ns,
    to_lines,
    vitals_line,
)
from .spool import Spool, SpoolLockedError
from .writer import (
    DEFAULT_DATABASE,
    PermanentWriteError,
    RetryableWriteError,
    Transport,
    V1Transport,
    V2Transport,
    WriteError,
    Writer,
    WriterClosedError,
    make_transport,
)

__all__ = [
    "ALERTS_MEASUREMENT",
    "DEFAULT_DATABASE",
    "ECG_MEASUREMENT",
    "PPG_MEASUREMENT",
    "VITALS_MEASUREMENT",
    "PermanentWriteError",
    "Point",
    "RetryableWriteError",
    "Spool",
    "SpoolLockedError",
    "Transport",
    "V1Transport",
    "V2Transport",
    "WriteError",
    "Writer",
    "WriterClosedError",
    "alert_line",
    "ecg_lines",
    "escape_field_key",
    "escape_measurement",
    "escape_tag_value",
    "format_field_value",
    "line",
    "make_transport",
    "ppg_lines",
    "sample_times_ns",
    "to_lines",
    "vitals_line",
]

"""InfluxDB sink: line-protocol serializer, batching/retrying writer, crash-safe spool.

Data model (InfluxDB database / bucket ``p2es``):

* ``ecg``    tag ``patient``; fields ``I, II, III, aVR, aVL, aVF, V1..V6`` (mV), one point per sample
* ``ppg``    tag ``patient``; field ``value``
* ``vitals`` tag ``patient``; fields ``hr_bpm, hr_ppg_bpm, qrs_ms, qtc_ms, sqi, uncertainty``
  (NaN fields omitted), one point per window
* ``alerts`` tags ``patient, rule, priority``; fields ``state, value, message``

Timestamps are integer nanoseconds derived from the device ``t0``.
"""

from .lineprotocol import (
    ALERTS_MEASUREMENT,
    ECG_MEASUREMENT,
    PPG_MEASUREMENT,
    VITALS_FIELDS,
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
    "VITALS_FIELDS",
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

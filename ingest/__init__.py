"""MQTT ingest: validated PPG chunks -> per-patient streams -> model windows.

The wire contract (topics, pydantic models, binary format, parser) is :mod:`p2es.contracts`.
* :mod:`ingest.stream`   - per-patient reorder / gap handling / resampling / SQI /
  windowing (pure, synchronous) and the registry of patients.
* :mod:`ingest.fairness` - the per-patient budget (token buckets on samples/s and messages/s;
  pure, explicit clock) the services apply before a chunk reaches its stream.
* :mod:`ingest.service`  - the asyncio/aiomqtt service that ties them to a broker.
"""

from ingest.fairness import PatientBudget
from ingest.service import IngestService
from ingest.stream import (
    PatientStream,
    StreamConfig,
    StreamingResampler,
    StreamRegistry,
    signal_quality,
)

__all__ = [
    "IngestService",
    "PatientBudget",
    "PatientStream",
    "StreamConfig",
    "StreamingResampler",
    "StreamRegistry",
    "signal_quality",
]

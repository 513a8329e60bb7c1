"""MQTT ingest: validated PPG chunks -> per-patient streams -> model windows.

* :mod:`ingest.messages` - the MQTT contract: topics, pydantic models, binary format, parser.
* :mod:`ingest.stream`   - per-patient reorder / gap handling / resampling / filtering / SQI /
  windowing (pure, synchronous) and the registry of patients.
* :mod:`ingest.service`  - the asyncio/aiomqtt service that ties them to a broker.
"""

from ingest.messages import (
    DEADLETTER_TOPIC,
    TOPIC_PREFIX,
    DeadLetter,
    GapInfo,
    ParsedPpg,
    ParsedProfile,
    PpgChunk,
    Profile,
    Window,
    decode_binary_chunk,
    encode_binary_chunk,
    parse_message,
    ppg_topic,
    profile_topic,
)
from ingest.service import IngestService
from ingest.stream import (
    PatientStream,
    StreamConfig,
    StreamingResampler,
    StreamRegistry,
    signal_quality,
)

__all__ = [
    "DEADLETTER_TOPIC",
    "TOPIC_PREFIX",
    "DeadLetter",
    "GapInfo",
    "ParsedPpg",
    "ParsedProfile",
    "PpgChunk",
    "Profile",
    "Window",
    "decode_binary_chunk",
    "encode_binary_chunk",
    "parse_message",
    "ppg_topic",
    "profile_topic",
    "IngestService",
    "PatientStream",
    "StreamConfig",
    "StreamingResampler",
    "StreamRegistry",
    "signal_quality",
]

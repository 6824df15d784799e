"""The community MQTT contract, version 1 (docs/protocol.md).

The only place where topics are spelled and payloads are modelled. Both the
coordinator and the gateway import it; nothing else builds a topic string.
"""

from protocol.codec import (
    DEFAULT_LIMITS,
    MAX_PAYLOAD_BYTES,
    Decoded,
    Limits,
    Rejection,
    decode,
    decode_payload,
    encode,
    encode_alloc,
)
from protocol.ids import ID_PATTERN, is_valid_id, validate_id
from protocol.models import (
    Ack,
    AdminSignalSet,
    Alloc,
    CloseReason,
    CoordinatorStatus,
    CycleClosed,
    CycleRequest,
    Flex,
    GridShed,
    GridSignal,
    LoadFlex,
    LoadKind,
    LoadState,
    NetLoad,
    Payload,
    Report,
    SiteContext,
    SiteStatus,
    format_utc,
)
from protocol.topics import Route, TopicKind, Topics

PROTOCOL_VERSION = 1

__all__ = [
    "DEFAULT_LIMITS",
    "ID_PATTERN",
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "AdminSignalSet",
    "Alloc",
    "CloseReason",
    "CoordinatorStatus",
    "CycleClosed",
    "CycleRequest",
    "Decoded",
    "Flex",
    "GridShed",
    "GridSignal",
    "Limits",
    "LoadFlex",
    "LoadKind",
    "LoadState",
    "NetLoad",
    "Payload",
    "Rejection",
    "Report",
    "Route",
    "SiteContext",
    "SiteStatus",
    "TopicKind",
    "Topics",
    "decode",
    "decode_payload",
    "encode",
    "encode_alloc",
    "format_utc",
    "is_valid_id",
    "validate_id",
]

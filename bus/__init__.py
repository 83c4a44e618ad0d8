"""The wire contract between madoguchi's edge daemons and its central service.

Everything that crosses MQTT is defined here: the versioned topic tree
(:mod:`bus.topics`), the strict pydantic models of every payload
(:mod:`bus.models`) and the one way to turn bytes into a model and back
(:mod:`bus.codec`).  This package imports nothing of ours: edge and central
both depend on it and meet only through it.
"""

from bus.codec import MAX_PAYLOAD_BYTES, PayloadError, decode, encode
from bus.models import SCHEMA_VERSION

__all__ = ["MAX_PAYLOAD_BYTES", "SCHEMA_VERSION", "PayloadError", "decode", "encode"]

"""The DAQ-to-node wire protocol, its sender and receiver, and the hardware-in-the-loop rig.

``FrameSender`` (DAQ side) and ``FrameReceiver`` (node side) speak the protocol described in
``docs/protocol.md``; ``decode_message``/``encode_frame`` are the same protocol without sockets.
Importing this package never imports the twin (only ``firmware_bridge.rig`` does, lazily).
"""

from firmware_bridge.protocol import (
    Frame,
    FrameHeader,
    Gap,
    Heartbeat,
    Message,
    SeriesEnd,
    SeriesStart,
    decode_message,
    encode_frame,
)
from firmware_bridge.receiver import FrameReceiver, ReceiverCounters
from firmware_bridge.sender import FrameSender, SenderCounters

__all__ = [
    "Frame",
    "FrameHeader",
    "FrameReceiver",
    "FrameSender",
    "Gap",
    "Heartbeat",
    "Message",
    "ReceiverCounters",
    "SenderCounters",
    "SeriesEnd",
    "SeriesStart",
    "decode_message",
    "encode_frame",
]

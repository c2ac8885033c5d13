"""Moving batches from the service to trainers.

- :mod:`.layout`: ``BatchLayout``, where each array of a batch sits inside a slot.
- :mod:`.ring`: POSIX shared-memory segments (0600, instance-unique names, stale cleanup).
- :mod:`.channel`: ``ConsumerChannel`` (service side: slots + Unix-socket protocol) and
  ``RingConsumer`` (client side).
- :mod:`.http_stream`: batches as length-prefixed safetensors frames for remote consumers.

The trainer-facing API is :class:`clipserve.client.ClipStream`.
"""

from clipserve.transport.channel import ConsumerChannel, NoBatchError, RingConsumer, SlotMessage
from clipserve.transport.http_stream import (
    FRAME_MEDIA_TYPE,
    DecodedFrame,
    FrameFormatError,
    encode_batch_frame,
    iter_decode_frames,
)
from clipserve.transport.layout import BatchLayout, FieldLayout, batch_arrays, batch_position
from clipserve.transport.ring import SharedSegment, cleanup_stale_segments, new_instance_token, segment_name

__all__ = [
    "FRAME_MEDIA_TYPE",
    "BatchLayout",
    "ConsumerChannel",
    "DecodedFrame",
    "FieldLayout",
    "FrameFormatError",
    "NoBatchError",
    "RingConsumer",
    "SharedSegment",
    "SlotMessage",
    "batch_arrays",
    "batch_position",
    "cleanup_stale_segments",
    "encode_batch_frame",
    "iter_decode_frames",
    "new_instance_token",
    "segment_name",
]

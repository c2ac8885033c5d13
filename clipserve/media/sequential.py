"""The full sequential decode that defines frame numbering: frame ``i`` is the ``i``-th frame it yields.

Every non-empty packet of the stream is sent in file order, *discard* packets included (the decoder
needs them as references and drops their frames itself), then the decoder is drained. The index
counts frames with it where packet timestamps cannot identify them, and the PyAV executor decodes
such files with it, so both number frames the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import av


def sequential_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                      ) -> Iterator[av.VideoFrame]:
    """Yield every frame of ``stream`` in output order, from the container's current position.

    Raises:
        av.error.FFmpegError: demuxing or decoding failed (callers name the file and the place).
    """
    codec = stream.codec_context
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        yield from codec.decode(packet)
    yield from codec.decode(None)

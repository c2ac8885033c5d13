"""``/v1/consumers``: attach and detach trainer ranks; the HTTP batch stream of remote consumers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.responses import StreamingResponse

from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import ConsumerAttached, ConsumerCreate
from clipserve.errors import ClipserveError, RingError
from clipserve.service import (
    MAX_CONSUMERS,
    ConsumerConflictError,
    ConsumerRequestError,
    ServiceBusyError,
    UnknownConsumerError,
)
from clipserve.transport.http_stream import FRAME_MEDIA_TYPE, encode_batch_frame

router = APIRouter(
    prefix="/v1/consumers",
    tags=["consumers"],
    responses={404: {"description": "No consumer with this id is attached"}},
)

ConsumerIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_]{1,32}$", description="id from the attach response")]
#: How long the HTTP stream waits for the next batch before checking the client is still there, seconds.
STREAM_POLL_SECONDS = 1.0
#: Streams wait for batches in threads of their own, so they never starve the shared thread pool
#: that the other (sync) routes run in.
_STREAM_THREADS = anyio.CapacityLimiter(MAX_CONSUMERS)


@router.post("", response_model=ConsumerAttached, status_code=status.HTTP_201_CREATED)
def attach_consumer(service: ServiceDep, request: ConsumerCreate) -> dict:
    """Attach rank ``rank`` of ``world_size``: returns the consumer id and where its batches arrive."""
    try:
        return service.attach(request)
    except ConsumerRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except ServiceBusyError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except RingError as exc:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(exc)) from None
    except ClipserveError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"attach failed: {exc}") from None


@router.delete("/{consumer_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def detach_consumer(service: ServiceDep, consumer_id: ConsumerIdPath) -> Response:
    """Detach: stop the consumer's producer (workers joined) and remove its ring."""
    try:
        service.detach(consumer_id)
    except UnknownConsumerError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{consumer_id}/batches",
    response_class=StreamingResponse,
    responses={200: {"content": {FRAME_MEDIA_TYPE: {}}, "description": "batch frames, one after another"}},
)
def stream_batches(service: ServiceDep, consumer_id: ConsumerIdPath) -> StreamingResponse:
    """The batches of an HTTP consumer as a stream of binary frames (``encode_batch_frame``)."""
    try:
        service.open_http_stream(consumer_id)
    except UnknownConsumerError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except ConsumerConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    async def frames() -> AsyncIterator[bytes]:
        try:
            while True:
                batch, going_on = await anyio.to_thread.run_sync(
                    service.next_http_batch, consumer_id, STREAM_POLL_SECONDS, limiter=_STREAM_THREADS)
                if batch is not None:
                    yield await anyio.to_thread.run_sync(encode_batch_frame, batch, service.layout,
                                                         limiter=_STREAM_THREADS)
                if not going_on:
                    return
        finally:  # also when the client went away (cancelled: no await possible here); a quick call
            service.close_http_stream(consumer_id)

    return StreamingResponse(frames(), media_type=FRAME_MEDIA_TYPE)

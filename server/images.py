"""Camera images off the wire: only the cameras the policy reads, within pixel budgets.

A PNG or JPEG declares its size in a few header bytes and may inflate a thousandfold when
decoded: a 49 KB PNG of 4096 x 4096 pixels becomes 48 MB of RGB, and twenty fit in one 1 MB
message. So sizes are read from the headers first, and an image is decoded only if the policy
reads its camera (others are ignored, never decoded), it has at most MAX_IMAGE_PIXELS, and the
request's images together fit its budget (`max_request_pixels`). Across requests, `PixelBudget`
bounds the pixels decoded and held at once (decoding, queued or running), which bounds the
server's image memory. The servicer decodes off the event loop, so health checks and small
requests are answered while a big one decodes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from PIL import Image as PILImage

from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server.errors import InvalidInput, Overloaded, quote

# Pillow allocates decoded images in blocks of 16 MB by default: below glibc's largest mmap
# threshold (32 MB), so freed blocks stay in the decode threads' heaps, and a burst of large images
# kept ~150 MB resident for good. Blocks of 64 MB (a whole 4096 x 4096 image) are mmapped and go
# back to the system when freed; small images still get only what they need.
PILLOW_BLOCK_BYTES = 64 * 2**20
PILImage.core.set_block_size(PILLOW_BLOCK_BYTES)

MAX_IMAGE_PIXELS = 4096 * 4096  # one image; refused from its header, before decoding
DEFAULT_REQUEST_PIXELS = MAX_IMAGE_PIXELS  # one request's images together (ServerConfig.max_request_pixels)
FORMATS = {pb.Image.JPEG: "JPEG", pb.Image.PNG: "PNG"}


def camera_field(field: str, camera: str) -> str:
    """`observation.images['front']`, the camera name quoted within bounds."""
    return f"{field}[{quote(camera)}]"


def image_pixels(img: pb.Image, field: str) -> int:
    """Pixels the image will decode to, from RAW's fields or the file's header (nothing decoded)."""
    if not img.data:
        raise InvalidInput(field, "empty image data")
    if img.encoding == pb.Image.RAW:
        h, w = int(img.height), int(img.width)
        if h < 1 or w < 1:
            raise InvalidInput(field, f"RAW image needs height and width >= 1, got {h}x{w}")
        if len(img.data) != h * w * 3:
            raise InvalidInput(field, f"RAW {h}x{w}x3 uint8 needs {h * w * 3} bytes, got {len(img.data)}")
        return h * w
    fmt = _format(img, field)
    try:
        with PILImage.open(io.BytesIO(img.data), formats=[fmt]) as pil:  # reads the header only
            w, h = pil.size
    except Exception as e:  # PIL raises a zoo of types for corrupt files
        raise _undecodable(field, fmt, e) from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InvalidInput(field, f"{w}x{h} exceeds {MAX_IMAGE_PIXELS} pixels")
    return int(w * h)


def decode_image(img: pb.Image, field: str) -> np.ndarray:
    """Image message -> uint8 [h, w, 3] RGB."""
    image_pixels(img, field)  # size and encoding checked before any pixel is decoded
    if img.encoding == pb.Image.RAW:
        return np.frombuffer(img.data, dtype=np.uint8).reshape(int(img.height), int(img.width), 3).copy()
    fmt = _format(img, field)
    try:
        with PILImage.open(io.BytesIO(img.data), formats=[fmt]) as pil:
            rgb = pil if pil.mode == "RGB" else pil.convert("RGB")  # no second copy when already RGB
            return np.asarray(rgb, dtype=np.uint8)  # [h, w, 3]
    except Exception as e:
        raise _undecodable(field, fmt, e) from None


def cameras_to_decode(
    images: Mapping[str, pb.Image], cameras: Sequence[str], field: str, max_pixels: int
) -> dict[str, int]:
    """The policy's cameras -> pixels each will decode to; refuses missing cameras, oversized
    images and a total over the request's budget. Images of other cameras are not looked at."""
    missing = [c for c in cameras if c not in images]
    if missing:
        raise InvalidInput(field, f"missing camera(s) {missing}; the policy reads {list(cameras)}")
    pixels = {c: image_pixels(images[c], camera_field(field, c)) for c in cameras}
    total = sum(pixels.values())
    if total > max_pixels:
        raise InvalidInput(
            field,
            f"{total} pixels over cameras {list(cameras)} exceed the per-request budget of {max_pixels}",
        )
    return pixels


def decode_cameras(
    images: Mapping[str, pb.Image], cameras: Sequence[str], field: str, max_pixels: int
) -> dict[str, np.ndarray]:
    """The policy's cameras, decoded (uint8 [h, w, 3] each), within the request's pixel budget."""
    cameras_to_decode(images, cameras, field, max_pixels)
    return {c: decode_image(images[c], camera_field(field, c)) for c in cameras}


class PixelBudget:
    """Pixels of decoded images held at once across requests, from before decoding until the
    request is answered. Used from the event loop only, so a plain counter suffices."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # most pixels held at once
        self.held = 0  # pixels held now

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if pixels and self.held + pixels > self.limit:
            raise Overloaded(
                f"observation.images: {self.held} pixels of other requests are being decoded or served "
                f"(limit {self.limit}); retry later"
            )
        self.held += pixels
        try:
            yield
        finally:
            self.held -= pixels


def _format(img: pb.Image, field: str) -> str:
    fmt = FORMATS.get(img.encoding)
    if fmt is None:
        raise InvalidInput(field, "encoding must be JPEG, PNG or RAW (uint8 [height, width, 3])")
    return fmt


def _undecodable(field: str, fmt: str, e: Exception) -> InvalidInput:
    return InvalidInput(field, f"cannot decode as {fmt}: {type(e).__name__}: {quote(str(e), 120)}")

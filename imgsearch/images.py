"""Safe image decoding: size limits, draft-mode downscale, EXIF orientation, odd pixel formats."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import BadRequest, Forbidden, ImgSearchError, NotAnImage, NotFound, PayloadTooLarge
from .security import OUTSIDE

log = logging.getLogger(__name__)

BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
# The kernel's own file systems: never read, wherever they are mounted. /proc, /sys and /dev
# are refused by name (security.py), but a bind mount or a second procfs elsewhere (inside an
# allowed root) names the same files, which are regular files to fstat.
PSEUDO_FS = frozenset(
    {
        "proc", "sysfs", "devtmpfs", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs",
        "configfs", "bpf", "pstore", "efivarfs", "binfmt_misc", "fusectl",
    }
)  # fmt: skip
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Decoded:
    """An RGB image reduced for processing, plus the original's size (after EXIF rotation)."""

    image: Image.Image
    width: int
    height: int


def enable_heif() -> bool:
    """Register the HEIC/HEIF opener when pillow-heif is installed; return whether it is."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def image_extensions(heif: bool) -> frozenset[str]:
    """File extensions that indexing picks up."""
    return BASE_EXTENSIONS | HEIF_EXTENSIONS if heif else BASE_EXTENSIONS


def read_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file whole, with its stat; refuse FIFOs, devices, files over `max_bytes`."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise NotAnImage(f"not a regular file: {path}")
            if _kernel_fs(st.st_dev):
                raise Forbidden(f"{OUTSIDE}: {path}")
            if st.st_size > max_bytes:
                raise PayloadTooLarge(f"file is {st.st_size} bytes, over the {max_bytes} limit")
            return fh.read(max_bytes + 1), st
    except OSError as exc:
        refusal = _unreadable(path, exc)
        if refusal is None:
            raise
        raise refusal from None


def _kernel_fs(device: int) -> bool:
    """Whether `device` (st_dev) holds a kernel file system (PSEUDO_FS). Those have no disk
    behind them (major number 0, as tmpfs and overlayfs have): only for such a device is the
    mount table read (~0.1 ms), so a file on a disk costs nothing more than its fstat."""
    return os.major(device) == 0 and device in _pseudo_devices()


def _pseudo_devices() -> set[int]:
    """The devices of PSEUDO_FS mounts in /proc/self/mountinfo (field 3 is `major:minor`,
    the file system type comes first after ` - `); none where it cannot be read."""
    out: set[int] = set()
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) > 2 and kind and kind[0] in PSEUDO_FS:
            major, _, minor = fields[2].partition(":")
            if major.isdigit() and minor.isdigit():
                out.add(os.makedev(int(major), int(minor)))
    return out


def _unreadable(path: Path, exc: OSError) -> ImgSearchError | None:
    """What the caller did wrong when a path cannot be opened; None for the machine's own
    failures (EIO and the like), which stay errors of ours."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # ENOTDIR: a file used as a folder
        return NotFound(f"no such file: {path}")
    if exc.errno == errno.ELOOP:
        return NotFound(f"cannot open {path}: too many levels of symbolic links (a loop?)")
    if exc.errno == errno.ENAMETOOLONG:
        return BadRequest(f"file name too long: {path}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NotFound(f"cannot read: {path}")
    if exc.errno == errno.EISDIR:
        return NotAnImage(f"is a directory: {path}")
    if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
        return NotAnImage(f"not a regular file: {path}")
    return None


def decode(data: bytes, *, min_side: int, max_pixels: int) -> Decoded:
    """Decode image bytes to RGB whose shorter side is about `min_side` (never below it).

    JPEGs are decoded at a reduced scale (Pillow draft mode), so a 12 MP photo is never
    decoded whole just to make a small model input.
    """
    if not data:
        raise NotAnImage("empty file")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise NotAnImage(f"{width}x{height} is over the {max_pixels}-pixel limit")
        rotated = img.getexif().get(ExifTags.Base.Orientation, 1) in {5, 6, 7, 8}
        img.draft("RGB", (min_side, min_side))
        img.load()
        # Turned first: _to_rgb makes new images (alpha flattened, 16-bit scaled) without EXIF.
        img = _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise NotAnImage("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise NotAnImage(f"refused as a decompression bomb: {exc}") from None
    except NotAnImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise NotAnImage(f"cannot decode image: {exc}") from None
    if rotated:
        width, height = height, width
    return Decoded(_reduce(img, min_side), width, height)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is flattened onto white."""
    if img.mode in {"L", "RGB"} and "transparency" in img.info:
        img = img.convert("RGBA")  # a colour key (PNG tRNS): transparent like an alpha channel
    if img.mode == "RGB":
        return img
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / top if top > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reduce(img: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by an integer factor while the shorter side stays at least `min_side`."""
    factor = min(img.size) // min_side
    return img.reduce(factor) if factor >= 2 else img

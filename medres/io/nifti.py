"""NIfTI-1/NIfTI-2 files (nibabel): 2D, 3D and 4D, affine honoured."""

from __future__ import annotations

import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np

try:  # ISA-L's inflate: the same bytes as zlib's, about twice as fast
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works
    import zlib as _zlib

from medres.errors import (
    ScanContentError,
    ScanError,
    ScanGeometryError,
    ScanReadError,
    first_line,
)
from medres.io.volume import Volume, require_finite
from medres.limits import over_budget

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DEFLATE_RATIO = 1032  # the most deflate can compress: 1032 bytes out per byte in
_HEADER_BYTES = 352  # a NIfTI-1 header and its 4-byte extension flag
_IN_MEMORY_BYTES = 1 << 26  # .nii.gz files decoding to more than this stream through nibabel


def is_nifti_path(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_declared_size(image, path: Path) -> None:
    """Refuse a header that declares more voxels than the budget or than the file can
    hold, before any voxel is decoded.

    An uncompressed file must hold ``vox_offset + voxels × bytes``; a gzipped one at
    least ``1/1032`` of that, deflate's largest possible compression ratio.
    """
    _check_sizes(image.shape, image.get_data_dtype(), image.header.get_data_offset(), path)


def _check_sizes(shape, dtype, offset, path: Path, size: int | None = None) -> int:
    """:func:`_check_declared_size` from the header's values; returns the bytes the
    file's voxels end at (``vox_offset + voxels × bytes``)."""
    shape = tuple(int(n) for n in shape)
    problem = over_budget(shape[:3], math.prod(shape[3:]))
    if problem:
        raise ScanContentError(str(path), problem)
    needed = math.prod(shape) * np.dtype(dtype).itemsize
    size = path.stat().st_size if size is None else size
    offset = int(offset or 0)
    compressed = str(path).lower().endswith(".gz")
    if (compressed and needed > _DEFLATE_RATIO * size) or (
        not compressed and offset + needed > size
    ):
        raise ScanReadError(
            str(path),
            f"the header declares {' x '.join(map(str, shape))} voxels ({needed:,} bytes) but the "
            f"file holds {size:,} bytes{' compressed' if compressed else ''}: it is truncated or "
            "its header is wrong; export it again",
        )
    return offset + needed


def _inflate(raw: bytes, size: int) -> bytes:
    """The first ``size`` bytes that the gzip data ``raw`` decompresses to (its members
    one after another, as :mod:`gzip` reads them); fewer when the data end first. Never
    decompresses more than ``size`` bytes. Damaged data raise the decompressor's error."""
    parts, have, rest = [], 0, raw
    while have < size and rest:
        inflater = _zlib.decompressobj(31)  # 31: a gzip member, CRC checked at its end
        parts.append(inflater.decompress(rest, size - have))
        have += len(parts[-1])
        if not inflater.eof:
            break  # enough bytes, or the data end mid-member (truncated)
        rest = inflater.unused_data
    return b"".join(parts)


def _load_gzipped(path: Path) -> tuple[nib.Nifti1Image, np.ndarray] | None:
    """A NIfTI-1 ``.nii.gz`` decompressed in memory: the file read once, only the bytes
    up to its last voxel inflated (ISA-L, else zlib), then nibabel's own reading of
    those bytes (header, extensions, scaling), so the array and affine are nibabel's.

    Returns None where :func:`nib.load` should read the file instead: not a NIfTI-1
    single file, over :data:`_IN_MEMORY_BYTES`, or any error but MemoryError (damaged,
    truncated); the stream then gives the same error as before.

    Raises:
        ScanContentError, ScanReadError: the header declares more voxels than the
            budget or than the file can hold (:func:`_check_sizes`), before decoding.
    """
    try:
        if path.stat().st_size > _IN_MEMORY_BYTES:
            return None
        raw = path.read_bytes()
        head = _inflate(raw, _HEADER_BYTES)
        if len(head) < _HEADER_BYTES or head[344:348] != b"n+1\0":
            return None
        header = nib.Nifti1Header(head[:348])  # checked as nib.load checks it
        shape, dtype = header.get_data_shape(), header.get_data_dtype()
        offset = header.get_data_offset()
    except MemoryError:
        raise
    except Exception:
        return None
    end = _check_sizes(shape, dtype, offset, path, size=len(raw))
    if offset < _HEADER_BYTES or end > _IN_MEMORY_BYTES:
        return None
    try:
        body = head + _inflate(raw, end)[_HEADER_BYTES:]
        if len(body) < end:
            return None
        image = nib.Nifti1Image.from_stream(io.BytesIO(body))
        return image, np.asanyarray(image.dataobj)
    except MemoryError:
        raise
    except Exception:
        return None


def _fortran_to_c(data: np.ndarray) -> np.ndarray:
    """A C-ordered copy of a Fortran-ordered 3D array, as ``np.ascontiguousarray``.

    Copied straight, a slab stride that is a multiple of 1 KiB (64³ uint8: 4 KiB) maps
    every voxel of a C row to the same few cache sets; the slabs are first copied (in
    order) into a buffer whose stride is one cache line longer. 64³ uint8: 5× faster.
    """
    src = data.T  # C-ordered (Z, Y, X)
    slab = src[0].size
    if data.ndim != 3 or (slab * data.itemsize) % 1024 or data.size < 1 << 15:
        return np.ascontiguousarray(data)
    buffer = np.empty((src.shape[0], slab + 64 // data.itemsize), data.dtype)
    buffer[:, :slab] = src.reshape(src.shape[0], slab)
    return np.ascontiguousarray(buffer[:, :slab].reshape(src.shape).T)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file as ``(C, X, Y[, Z])``; a 4D file's 4th axis becomes the channels.

    The affine is nibabel's best affine (sform, else qform), so
    ``nib.Nifti1Image(volume.array[0], volume.affine)`` reproduces the file's image.

    Raises:
        ScanReadError: not a NIfTI file, damaged, truncated, a header declaring more
            voxels than the file can hold, or more than 4 dimensions.
        ScanContentError: NaN or infinite voxels; more voxels than :mod:`medres.limits`
            allows (both size checks read the header only).
    """
    path = Path(path)
    try:
        loaded = _load_gzipped(path) if str(path).lower().endswith(".gz") else None
        if loaded is None:
            image = nib.load(path)  # the header only
            _check_declared_size(image, path)
            data = np.asanyarray(image.dataobj)
        else:
            image, data = loaded
    except (ScanError, MemoryError):  # MemoryError: read_scan names it
        raise
    except Exception as e:  # nibabel, gzip and zlib raise many types for damaged files
        raise ScanReadError(
            str(path), f"not a readable NIfTI file ({type(e).__name__}: {first_line(e)})"
        ) from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.flags.f_contiguous:
        array = _fortran_to_c(data)[None]
    elif data.ndim == 2 or data.ndim == 3:
        array = data[None]
    elif data.ndim == 4:
        array = np.moveaxis(data, -1, 0)
    else:
        raise ScanReadError(
            str(path), f"{data.ndim}-D NIfTI (shape {data.shape}) is not supported; expected 2-4 D"
        )
    require_finite(array, str(path))
    header = image.header
    meta = {
        "format": "nifti",
        "modality": "NIFTI",
        "description": header.get("descrip", np.array(b"")).item().decode(errors="replace").strip()
        or None,
    }
    if data.ndim == 4:
        meta["channel_axis"] = "time"
    try:
        return Volume(np.ascontiguousarray(array), image.affine, meta)
    except ValueError as e:  # e.g. a singular sform: no usable geometry
        raise ScanGeometryError(str(path), f"unusable NIfTI geometry: {e}") from e

"""The adversarial corpus (issue: one bad file must never cost a night): each broken
input built from real files (the shipped chest X-rays, pydicom's and nibabel's test
files), beside good scans, with what `medres predict` must say of it.

:func:`build_corpus` writes the folder and returns :class:`Corpus`: the good scans'
ids (each must become a prediction row), and for each broken input the stage and the
words its failure row must hold. Files that are not scans (text, a FIFO, a folder link
back into the tree) are skipped and counted, not failures.
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from tests.conftest import EXAMPLE, PYDICOM_FILES, pydicom_data_dir

CT = PYDICOM_FILES / "CT_small.dcm"
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"
HOSTILE_UID = "![u](http://example.invalid/x.png)[Open the full report](http://example.invalid/r)"
# a non-UTF-8 file name (Latin-1 bytes from an old export tool)
LATIN1_NAME = os.fsdecode(b"r\xe9sum\xe9_\xff.png")


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote under ``root``.

    Attributes:
        good: scan ids (paths relative to root, as predictions.csv shows them).
        broken: file path (as failures.csv shows it) -> (stage, words in the message);
            ``stage`` None where ingest already refuses the file in discovery and predict
            may name another stage.
        read_errors: the broken paths that ingest too records as error rows (the rest
            are readable scans that only a bundle refuses: other modality, colour, 3D).
        skipped: files that are not scans.
    """

    root: Path
    good: list[str] = field(default_factory=list)
    broken: dict[str, tuple[str, str]] = field(default_factory=dict)
    read_errors: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)


def build_corpus(root: Path, n_good: int = 60) -> Corpus:
    """Write ``n_good`` shipped chest X-rays and every broken input into ``root``."""
    corpus = Corpus(root)
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    pngs = sorted((EXAMPLE / "test").glob("*.png"))[:n_good]
    for png in pngs:
        shutil.copy(png, good / png.name)
    corpus.good += [f"good/{p.name}" for p in pngs]
    grey = np.asarray(Image.open(pngs[0]))

    # good scans with names or encodings that used to break a batch
    shutil.copy(pngs[1], good / LATIN1_NAME)
    corpus.good.append("good/r\\xe9sum\\xe9_\\xff.png")
    hostile = "![u](http:  example.invalid x.png)[Open the full report](javascript:alert(1)).png"
    shutil.copy(pngs[2], good / hostile)
    corpus.good.append(f"good/{hostile}")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(good / "grey_saved_as_rgb.png")
    corpus.good.append("good/grey_saved_as_rgb.png")

    def broken(name: str, stage: str, words: str, read_error: bool = True) -> Path:
        path = bad / name
        corpus.broken[str(path)] = (stage, words)
        if read_error:
            corpus.read_errors.add(str(path))
        return path

    # NIfTI: flipped bytes early in the deflate stream (zlib.error) and in its middle
    # (gzip's CRC check); headers that lie about their size
    for name, start in [("flipped_early.nii.gz", 30), ("flipped_middle.nii.gz", None)]:
        broken(name, "read", "not a readable NIfTI").write_bytes(flip_gzip(ANATOMICAL, start))
    for name, shape, dtype, words in [
        ("declares_100000_cubed.nii", (100000,) * 3, np.uint8, "above the limit"),
        ("declares_30000_cubed_float.nii.gz", (30000,) * 3, np.float32, "above the limit"),
        ("declares_300_cubed_holds_none.nii", (300,) * 3, np.int16, "truncated"),
        ("declares_600x600x300_float.nii.gz", (600, 600, 300), np.float32, "truncated"),
    ]:
        broken(name, "read", words).write_bytes(_lying_nifti(shape, dtype, name.endswith(".gz")))
    # a real 169-megapixel PNG, just under Pillow's own bomb limit
    Image.fromarray(np.zeros((13000, 13000), np.uint8)).save(
        broken("169_megapixels.png", "read", "above the limit")
    )
    # DICOM cut inside its header, and one whose header bytes were flipped
    data = CT.read_bytes()
    broken("cut_in_header.dcm", "discover", "damaged DICOM").write_bytes(data[:2000])
    flipped = bytearray(data)
    flipped[140:148] = b"\xff" * 8  # the file meta group's length and VR
    broken("flipped_header.dcm", "discover", "damaged DICOM").write_bytes(bytes(flipped))
    # scans that read fine but that a bundle trained on grey PNGs cannot read correctly
    for n, (name, source) in enumerate(
        [
            ("rgb_secondary_capture.dcm", "SC_rgb.dcm"),
            ("ultrasound.dcm", "US1_UNCR.dcm"),
            ("ct.dcm", "CT_small.dcm"),
            ("mr.dcm", "MR_small.dcm"),
            ("mr_multiframe.dcm", "emri_small.dcm"),
            ("nm_jpeg2000.dcm", "JPEG2000.dcm"),
        ]
    ):  # new UIDs: a copy of a file elsewhere in the corpus would count as a duplicate
        ds = pydicom.dcmread(_pydicom_file(source))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{n + 1}1"
        ds.SeriesInstanceUID = f"2.25.{n + 1}2"
        ds.save_as(broken(name, "validate", "bundle was trained on PNG", read_error=False))
    # a series UID written to inject Markdown into the review app and text into logs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it is no UID
        ds = pydicom.dcmread(CT)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.99"
        ds.SeriesInstanceUID = HOSTILE_UID
        ds.save_as(broken("hostile_uid.dcm", "validate", "bundle was trained on PNG", False))
    colour = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    Image.fromarray(colour).save(broken("colour.png", "validate", "colour image", False))
    shutil.copy(ANATOMICAL, broken("brain_3d.nii", "validate", "expects 2D", read_error=False))
    # links that lead nowhere or in a circle
    os.symlink("loop_b.png", broken("loop_a.png", "discover", "symbolic link loop"))
    os.symlink("loop_a.png", broken("loop_b.png", "discover", "symbolic link loop"))
    os.symlink("gone.png", broken("dangling.png", "discover", "broken symbolic link"))
    # not scans: a FIFO (reading it would wait forever), a link back up the tree, text
    os.mkfifo(bad / "pipe.png")
    (bad / "up").symlink_to("..")
    (bad / "notes.txt").write_text("exported on Monday\n")
    corpus.skipped += [str(bad / "pipe.png"), str(bad / "up"), str(bad / "notes.txt")]

    # Step 1's corpus
    step1 = root / "step1"
    step1.mkdir()
    (step1 / "empty.dcm").touch()
    corpus.broken[str(step1 / "empty.dcm")] = ("discover", "empty file")
    (step1 / "truncated.dcm").write_bytes(data[: len(data) // 2])
    corpus.broken[str(step1 / "truncated.dcm")] = ("read", "")
    image = nib.load(ANATOMICAL)
    nan = np.full(image.shape, np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(nan, image.affine), step1 / "all_nan.nii.gz")
    corpus.broken[str(step1 / "all_nan.nii.gz")] = ("read", "NaN")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(step1 / "picture.png")
    corpus.good.append("step1/picture.png")
    (step1 / "picture_named.dcm").write_bytes((step1 / "picture.png").read_bytes())
    corpus.broken[str(step1 / "picture_named.dcm")] = ("discover", "looks like a PNG")
    corpus.read_errors |= {str(step1 / n) for n in ("empty.dcm", "truncated.dcm")}
    corpus.read_errors |= {str(step1 / n) for n in ("all_nan.nii.gz", "picture_named.dcm")}
    return corpus


def flip_gzip(path: Path, start: int | None = None, count: int = 64) -> bytes:
    """``path`` gzipped, with ``count`` bytes inverted from ``start`` (None: the middle)."""
    data = bytearray(gzip.compress(path.read_bytes(), mtime=0))
    start = len(data) // 2 if start is None else start
    for i in range(start, start + count):
        data[i] ^= 0xFF
    return bytes(data)


def _pydicom_file(name: str) -> Path:
    """One of pydicom's test files: shipped with pydicom, or in the pydicom-data package."""
    shipped = PYDICOM_FILES / name
    return shipped if shipped.exists() else pydicom_data_dir() / name


def _lying_nifti(shape: tuple[int, ...], dtype, compressed: bool) -> bytes:
    """A NIfTI file (NIfTI-2 where a dimension passes NIfTI-1's 32767) whose header
    declares ``shape`` over a body of 64 bytes."""
    kind = nib.Nifti2Header if max(shape) > 32767 else nib.Nifti1Header
    header = kind()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header["vox_offset"] = header.single_vox_offset
    body = header.binaryblock + b"\x00" * 4 + bytes(64)  # header, extension flag, voxels
    return gzip.compress(body) if compressed else body

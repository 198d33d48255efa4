"""The case view's scan viewer (medres.review.viewer): what it sends the browser, what it
says about the study, and, in chromium, zoom, pan, invert, keys and the value under the
pointer on a real CT volume (pydicom-data's eCT_Supplemental, 512 x 512 x 2, in HU),
with no picture served at a /media/ address."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from PIL import Image
from pydicom.data import get_testdata_file

from medres.io import read_scan
from medres.review import render, viewer
from tests.conftest import DICOM2NIFTI, needs
from tests.test_review_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    _free_port,
    _settle,
    server_group,
)

ANATOMICAL = Path(data_path) / "anatomical.nii"  # real T1 MRI, 33 x 41 x 25


def _decoded(values: dict) -> np.ndarray:
    raw = base64.b64decode(values["base64"])
    return np.frombuffer(raw, dtype="<i2" if values["dtype"] == "int16" else "<f4")


def _png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def test_the_browser_gets_the_stored_values_and_the_windowed_picture_of_the_slice():
    ct = render.display_scan(read_scan(get_testdata_file("CT_small.dcm")))
    data = viewer.payload(ct, "axial", 0, 400, 40, presets=list(render.window_presets(ct)))
    assert data["shape"] == [128, 128] and data["unit"] == "HU"
    assert data["values"]["dtype"] == "int16"  # whole HU: 2 bytes a pixel
    assert np.array_equal(_decoded(data["values"]).reshape(128, 128), ct.values)
    assert np.array_equal(_png(data["image"]), render.apply_window(ct.values, 400, 40))
    assert data["overlay"] is None and data["presets"][:2] == ["soft tissue", "lung"]

    image = nib.load(ANATOMICAL)
    mr = render.display_scan(read_scan(ANATOMICAL))
    heat = np.full(mr.values.shape, 0.5, dtype=np.float32)
    data = viewer.payload(mr, "coronal", 3, 100, 50, heat, 0.25, overlay_ready=True)
    picture = render.take_slice(mr.values, mr, "coronal", 3)
    assert data["shape"] == list(picture.shape) and data["unit"] == "a.u."
    assert np.array_equal(_decoded(data["values"]).reshape(picture.shape), picture)
    assert _png(data["overlay"]).shape == (*picture.shape, 4)
    assert data["label"] == f"Scan, coronal slice 4 of {image.shape[1]}"

    fractions = np.array([[0.25, -1.5], [3.0, 1e6]], dtype=np.float32)
    assert viewer.encode_values(fractions)["dtype"] == "float32"  # not whole, or too big
    assert np.array_equal(_decoded(viewer.encode_values(fractions)), fractions.ravel())
    colour = viewer.encode_values(np.zeros((2, 3, 3), np.float32))
    assert colour["channels"] == 3 and len(_decoded(colour)) == 18


def test_a_small_matrix_blown_up_says_so():
    assert viewer.upsampling_notice((28, 28), (1.0, 1.0)) == (
        "28 × 28 pixels shown at 18×: fine detail is not in the data."
    )
    assert viewer.upsampling_notice((512, 512), (0.5, 0.5)) is None
    assert viewer.upsampling_notice((256, 256), (1.0, 1.0)) is None  # 2x: ordinary
    assert "128 × 128 pixels shown at 4×" in viewer.upsampling_notice((128, 128), (0.66, 0.66))


def test_the_study_context_names_the_study_and_never_the_patient():
    path = get_testdata_file("CT_small.dcm")
    scan = viewer.load_scan(path, "hash")
    text = viewer.study_context({"modality": "CT", "patient_id": "1CT1"}, scan)
    assert text.startswith("CT · 2004\\-01\\-19 · e\\+1 · GE MEDICAL SYSTEMS")  # date, study
    assert "128 × 128 pixels · pixel 0\\.661 × 0\\.661 mm" in text
    assert "1CT1" not in text and "CompressedSamples" not in text  # patient id and name

    volume = viewer.load_scan(get_testdata_file("eCT_Supplemental.dcm"), "hash")
    text = viewer.study_context({"modality": "CT"}, volume)
    assert "2 axial slices of 512 × 512 · voxel 0\\.389 × 0\\.389 × 10 mm" in text


@needs(DICOM2NIFTI)
def test_the_study_header_comes_from_a_series_folder_and_nothing_from_a_nifti():
    series = DICOM2NIFTI / "generic" / "anatomical" / "001"
    assert set(viewer.study_header(series)) <= {"study_date", "study_description"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", viewer.study_header(series)["study_date"])
    assert viewer.study_header(ANATOMICAL) == {}


def test_the_component_files_ship_with_the_package():
    assert "export default function" in viewer._asset("viewer.js")
    assert ".medres-viewer" in viewer._asset("viewer.css")


STREAMLIT = [sys.executable, "-m", "streamlit", "run", "--server.headless", "true"]
APP = """
import streamlit as st
from medres.review import viewer
st.set_page_config(layout="wide")
image_column, _ = st.columns([3, 2], gap="large")  # as the case view lays it out
with image_column:
    viewer.show({case!r})
"""


@pytest.fixture(scope="module")
def ct_viewer(tmp_path_factory):
    """(url, Volume) of a Streamlit page showing viewer.show() of a CT volume with a
    Grad-CAM map (its corner hot)."""
    tmp = tmp_path_factory.mktemp("viewer")
    path = get_testdata_file("eCT_Supplemental.dcm")
    volume = read_scan(path)
    heat = np.zeros(volume.spatial_shape, np.float32)
    heat[:64, :64] = 1.0
    nib.save(nib.Nifti1Image(heat, volume.affine), tmp / "map.nii.gz")
    case = {"case_id": 1, "path": path, "input_hash": "ct", "modality": "CT"}
    (tmp / "app.py").write_text(APP.format(case={**case, "heatmap_map": str(tmp / "map.nii.gz")}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with server_group([*STREAMLIT, str(tmp / "app.py"), "--server.port", str(port)], url):
        yield url, volume


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(abs(i - j) for i, j in zip(a, b, strict=True))


READOUT = re.compile(r"voxel \[(\d+), (\d+), (\d+)\]: (-?\d+) HU")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium")
def test_zoom_pan_invert_and_the_hu_under_the_pointer_in_chromium(ct_viewer):
    from playwright.sync_api import expect, sync_playwright

    url, volume = ct_viewer
    stored = volume.array[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            view = page.locator(".medres-viewer[data-ready=true]")
            view.wait_for()
            canvas, readout = view.locator("canvas"), view.locator("[data-part=readout]")
            box = canvas.bounding_box()
            assert (box["width"], box["height"]) == (512, 512)  # 199 mm square: 512 px
            x, y = box["x"] + 256.5, box["y"] + 256.5  # in the middle of pixel (256, 256)

            def under(dx: float = 0.0) -> tuple[tuple[int, int, int], int]:
                page.mouse.move(x + dx, y)
                found = READOUT.fullmatch(readout.text_content())
                assert found, readout.text_content()
                voxel = tuple(int(v) for v in found.groups()[:3])
                return voxel, int(found.group(4))

            def grey() -> int:  # the canvas's red channel at the pointer
                at = [int(x - box["x"]), int(y - box["y"])]
                return canvas.evaluate(
                    "(c, [x, y]) => c.getContext('2d').getImageData(x, y, 1, 1).data[0]", at
                )

            centre, hu = under()
            assert hu == stored[centre]  # the file's own value, in HU, at the voxel named
            assert _apart(under(100.0)[0], centre) == 100  # 1 px a pixel at 100 %

            page.mouse.move(x, y)
            page.mouse.wheel(0, -100)  # two steps in: 156 %, around the pointer
            page.mouse.wheel(0, -100)
            expect(view.locator("[data-part=zoom]")).to_have_text("156%")
            assert under()[0] == centre  # the pixel under the pointer stays there
            assert _apart(under(100.0)[0], centre) == 64  # 100 px now span 64 pixels

            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 50, y, steps=5)  # drag the picture 50 px to the left
            page.mouse.up()
            assert _apart(under()[0], centre) == 32  # 50 px further along: 32 pixels

            before = grey()
            page.keyboard.press("i")
            after = grey()
            assert abs(after - (255 - before)) <= 1 and abs(after - before) > 20  # no rerun
            page.mouse.click(x, y)
            expect(view.locator("[data-part=pinned]")).to_have_text(re.compile("^Clicked: voxel"))

            page.keyboard.press("2")  # the second CT preset: lung
            _settle(page)
            expect(page.get_by_role("combobox", name="Window preset")).to_have_value("lung")
            page.keyboard.press("o")
            _settle(page)
            expect(page.get_by_role("switch", name="Grad-CAM overlay")).to_be_checked()
            expect(view.locator("[data-part=zoom]")).to_have_text("156%")  # kept over reruns
            expect(page.get_by_text("axial 2/2")).to_be_visible()
            page.keyboard.press("PageUp")  # the slice before, from anywhere on the page
            _settle(page)
            expect(page.get_by_text("axial 1/2")).to_be_visible()
            expect(view.locator("[data-part=notice]")).to_have_text("")  # 512 px: as stored
            expect(view.locator("[data-part=keys]")).to_have_text(
                "Keys: 1–5 window presets · O overlay · I invert · +/− zoom · 0 fit · "
                "PgUp/PgDn slice"
            )

            sources = page.evaluate("() => [...document.querySelectorAll('img')].map((i) => i.src)")
        finally:
            browser.close()
    media = [u for u in requests + sources if re.search(r"//[^/]+/media/", u)]
    assert not media, media  # no picture at an address a client could fetch on its own
    assert any(u.startswith(url) for u in requests)  # requests were recorded at all

"""What the review app draws (medres.review.render) and says (medres.review.summary),
on real scans: nibabel's T1 MRI in three storage orientations, pydicom's CT and MR."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.testing import data_path
from pydicom.data import get_testdata_file

from medres.io import read_scan
from medres.review import render
from medres.review.summary import case_badges, referral_reasons, reliability

ANATOMICAL = Path(data_path) / "anatomical.nii"  # real T1 MRI, 33x41x25, 2 mm, LAS


def _marked(tmp_path: Path, axcodes: str) -> tuple[Path, tuple[int, int, int]]:
    """anatomical.nii stored in ``axcodes`` order, with a bright voxel at its corner that
    lies most to the patient's right, anterior and superior; returns (file, voxel)."""
    image = nib.as_closest_canonical(nib.load(ANATOMICAL))  # RAS
    now = nib.orientations.io_orientation(image.affine)
    change = nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(axcodes))
    image = image.as_reoriented(change)
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    corners = [np.array(c) * (np.array(data.shape) - 1) for c in product((0, 1), repeat=3)]
    world = [image.affine @ [*c, 1] for c in corners]  # RAS: +x right, +y anterior, +z up
    corner = tuple(int(v) for v in corners[int(np.argmax([w[0] + w[1] + w[2] for w in world]))])
    data[corner] = data.max() * 10
    path = tmp_path / f"anat_{axcodes}.nii.gz"
    nib.save(nib.Nifti1Image(data, image.affine), path)
    return path, corner


@pytest.mark.parametrize("axcodes", ["LAS", "RAS", "PIR"])
def test_every_plane_is_shown_the_radiological_way_whatever_the_storage_order(tmp_path, axcodes):
    path, _ = _marked(tmp_path, axcodes)
    scan = render.display_scan(read_scan(path))
    assert scan.is_3d and scan.values.shape == (33, 41, 25)  # L, P, S like the original
    assert scan.spacing_mm == pytest.approx((2.0, 2.0, 2.0))
    # the right-anterior-superior corner: axial top-left (anterior up, patient's right on
    # the image's left), coronal and sagittal top-left (superior up; right / anterior left)
    where = {"axial": 24, "coronal": 0, "sagittal": 0}
    for plane, index in where.items():
        picture = render.take_slice(scan.values, scan, plane, index)
        assert np.unravel_index(np.argmax(picture), picture.shape) == (0, 0), plane
    assert [render.slice_count(scan, p) for p in render.PLANES] == [25, 41, 33]

    reference = render.display_scan(read_scan(_marked(tmp_path, "LAS")[0]))
    assert np.array_equal(scan.values, reference.values)  # same anatomy, same pictures


def test_a_heat_map_on_the_scan_grid_lands_on_the_same_pixels(tmp_path):
    path, corner = _marked(tmp_path, "PIR")
    source = nib.load(path)
    heat = np.zeros(source.shape, dtype=np.float32)
    heat[corner] = 1.0
    nib.save(nib.Nifti1Image(heat, source.affine), tmp_path / "heat.nii.gz")
    scan = render.display_scan(read_scan(path))
    shown = render.load_heatmap(tmp_path / "heat.nii.gz", scan)
    assert np.array_equal(np.argwhere(shown == 1.0), np.argwhere(scan.values == scan.values.max()))
    assert render.load_heatmap(None, scan) is None

    picture = render.render_view(scan, "axial", 24, 400, 200, shown, opacity=1.0, size=66)
    assert picture.shape == (66, 53, 3)  # 41 rows x 33 cols of 2 mm: the longer side is 66
    red = np.array([127, 0, 0])  # jet at 1.0
    assert np.abs(picture[0, 0].astype(int) - red).max() <= 2

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="belongs to another scan"):
        render.load_heatmap(wrong, scan)


def test_a_2d_heat_map_keeps_the_image_orientation(tmp_path):
    volume = read_scan(get_testdata_file("MR_small.dcm"))
    scan = render.display_scan(volume)
    assert not scan.is_3d and scan.values.shape == (64, 64)
    heat = np.zeros(volume.spatial_shape, dtype=np.float32)  # stored (X, Y) like the scan
    heat[10, 50] = 1.0  # column 10, row 50
    np.save(tmp_path / "map.npy", heat)
    shown = render.load_heatmap(tmp_path / "map.npy", scan)
    assert shown[50, 10] == 1.0 and shown.sum() == 1.0
    assert np.array_equal(scan.values, np.asarray(volume.array[0], dtype=np.float32).T)


def test_ct_gets_the_reading_windows_and_other_scans_an_auto_window():
    ct = render.display_scan(read_scan(get_testdata_file("CT_small.dcm")))
    presets = render.window_presets(ct)
    assert list(presets)[:4] == ["soft tissue", "lung", "bone", "brain"]
    assert presets["lung"] == (1500.0, -600.0) and presets["bone"] == (2500.0, 480.0)
    assert presets["brain"] == (80.0, 40.0) and render.AUTO in presets
    lung = render.apply_window(np.array([-1350.0, -600.0, 150.0, 3000.0]), 1500, -600)
    assert lung.tolist() == [0, 128, 255, 255]

    mr = render.display_scan(read_scan(get_testdata_file("MR_small.dcm")))
    presets = render.window_presets(mr)
    assert list(presets) == [render.AUTO, render.SCAN_WINDOW]  # auto first, then the header's
    assert presets[render.SCAN_WINDOW] == (1600.0, 600.0)
    width, level = presets[render.AUTO]
    low, high = np.percentile(mr.values, [1, 99])
    assert (width, level) == pytest.approx((high - low, (high + low) / 2))
    shown = render.apply_window(mr.values, width, level)
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255

    blank = render.DisplayScan(np.zeros((8, 8), np.float32), (1.0, 1.0), "IMAGE", None, None)
    (w_low, w_high), (l_low, l_high), step = render.window_ranges(
        blank, render.window_presets(blank)
    )
    assert w_high > w_low and l_high > l_low and step > 0


def test_overlay_opacity_and_true_proportions():
    grey = np.full((4, 6), 100, dtype=np.uint8)
    heat = np.ones((4, 6), dtype=np.float32)
    assert (render.overlay(grey, heat, 0.0) == 100).all()
    assert render.overlay(grey, heat, 1.0)[0, 0].tolist() == [128, 0, 0]
    wide = render.scale_to(np.zeros((10, 10, 3), np.uint8), (1.0, 3.0), size=300)
    assert wide.shape == (100, 300, 3)
    with pytest.raises(ValueError, match="plane must be one of"):
        render.slice_count(render.display_scan(read_scan(ANATOMICAL)), "oblique")


@pytest.mark.parametrize("axcodes", ["LAS", "PIR", "SPL"])
def test_each_shown_pixel_names_the_stored_voxel_it_came_from(tmp_path, axcodes):
    """The viewer's readout says which element of the file's array it shows: every
    pixel of every plane, whatever the storage order, has that element's value."""
    image = nib.as_closest_canonical(nib.load(ANATOMICAL))
    now = nib.orientations.io_orientation(image.affine)
    image = image.as_reoriented(
        nib.orientations.ornt_transform(now, nib.orientations.axcodes2ornt(axcodes))
    )
    stored = np.arange(np.prod(image.shape), dtype=np.float32).reshape(image.shape)
    nib.save(nib.Nifti1Image(stored, image.affine), tmp_path / "numbered.nii.gz")
    scan = render.display_scan(read_scan(tmp_path / "numbered.nii.gz"))
    for plane in render.PLANES:
        for index in (0, 7):
            picture = render.take_slice(scan.values, scan, plane, index)
            origin, per_row, per_col = (
                np.array(v) for v in render.source_index(scan, plane, index)
            )
            rows, cols = np.indices(picture.shape)
            where = origin + rows[..., None] * per_row + cols[..., None] * per_col
            assert np.array_equal(stored[tuple(np.moveaxis(where, -1, 0))], picture), plane

    mr = render.display_scan(read_scan(get_testdata_file("MR_small.dcm")))
    assert render.source_index(mr, "axial", 0) == ((0, 0), (1, 0), (0, 1))  # row, col as stored


def test_units_upsampling_and_the_overlay_layer():
    ct = render.display_scan(read_scan(get_testdata_file("CT_small.dcm")))
    mr = render.display_scan(read_scan(get_testdata_file("MR_small.dcm")))
    assert render.value_unit(ct) == "HU" and render.value_unit(mr) == "a.u."
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(ct.values, hounsfield)  # rescaled: the HU the readout names
    assert "patient_id" not in ct.facts and ct.facts["manufacturer"] == "GE MEDICAL SYSTEMS"

    assert render.upsampling((28, 28), (1.0, 1.0)) == pytest.approx(512 / 28)
    assert render.upsampling((512, 512), (0.7, 0.7)) == 1.0
    assert render.display_shape((10, 40), (3.0, 1.0), size=200) == (150, 200)  # true mm

    layer = render.overlay_rgba(np.array([[0.0, 1.0]]), 0.4)
    assert layer.shape == (1, 2, 4) and (layer[..., 3] == 102).all()  # 0.4 of 255
    assert layer[0, 1, :3].tolist() == [128, 0, 0] and layer[0, 0, :3].tolist() == [0, 0, 128]


def test_badges_explain_set_uncertainty_and_ood_in_plain_words():
    sure = {"conformal_set": ["1"], "uncertainty": 0.05, "ood": False, "ood_score": 3.2}
    doubtful = {
        "conformal_set": ["0", "1"],
        "uncertainty": 0.45,
        "ood": True,
        "ood_score": 1500.0,
        "refer_reason": "out of distribution; uncertainty above the validation threshold",
    }
    labels = [b.label for b in case_badges(sure)]
    assert labels == ["Conformal set {1}", "Uncertainty 0.05", "In distribution"]
    assert [b.colour for b in case_badges(sure)] == ["green"] * 3
    badges = case_badges(doubtful)
    assert [b.colour for b in badges] == ["orange", "orange", "red"]
    assert "cannot rule out" in badges[0].explanation
    assert "do not rely on the prediction" in badges[2].explanation


def test_reliability_bins_and_referral_counts_follow_the_reviewers():
    table = pd.DataFrame(
        {
            "confidence": [0.95, 0.92, 0.91, 0.65, 0.62, 0.55],
            "decision": ["agree", "agree", "disagree", "agree", None, "uncertain"],
            "refer_reason": [
                "",
                "",
                "conformal set holds 2 classes",
                "conformal set holds 2 classes; uncertainty above the validation threshold",
                "out of distribution",
                "",
            ],
        }
    )
    bins = reliability(table)
    assert bins["bin"].tolist() == ["0.6–0.7", "0.9–1.0"]
    assert bins["cases"].tolist() == [1, 3]  # undecided and uncertain cases left out
    assert bins["accuracy"].tolist() == pytest.approx([1.0, 2 / 3])
    assert bins["confidence"].tolist() == pytest.approx([0.65, (0.95 + 0.92 + 0.91) / 3])

    reasons = referral_reasons(table).set_index("reason")
    two_classes = reasons.loc["conformal set holds 2 classes"]
    assert two_classes[["cases", "agree", "disagree"]].tolist() == [2, 1, 1]
    assert reasons.loc["(not referred)", "cases"] == 3
    assert reasons.loc["out of distribution", "reviewed"] == 0


# Markdown and HTML that data (DICOM headers, file names, class names, notes) may hold
HOSTILE_TEXT = [
    "![u](http://example.invalid/x.png)[Open the full report](http://example.invalid/r)",
    "[a] [a]: http://example.invalid/ref",
    "<http://example.invalid> <b>bold</b> <img src=x onerror=alert(1)> <!-- c -->",
    "**strong** *em* _em_ __strong__ ~~strike~~ `code` ``co`de``",
    "# heading",
    "  ## heading after spaces",
    "- item\n+ item\n1. item\n2) item",
    "> quote\n\n    indented code\n\n```\nfenced\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "line one\n\nline two\r\n---\n===",
    ":red[colour] :blue-background[bg] :material/home: :smile: :streamlit: $x^2$ $$y$$",
    "&amp; &lt;b&gt; &#58; &copy; \\*not em\\* back\\slash\\",
    "1.2.840.113619.2.55.3.604688119.968.1337179898.22",
    "scan_001 (left) [v2] {x} !important @dr.lee #7 ~home 50% a+b=c; x|y ^2",
    "dr.lee@example.invalid www.example.invalid http://example.invalid/x_y",
    "tab\there  and   spaces \u00a0nbsp \u2028sep",
    "ünïcødé 日本語 ✓ → —",
    "",
]


def _plain(markdown: str) -> tuple[list[str], str]:
    """The token types a CommonMark (+ GFM tables and strikethrough) parser makes of
    ``markdown`` (inline ones included), and the text it would display."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)
    kinds, text = [], []
    for token in tokens:
        kinds.append(token.type)
        for child in token.children or []:
            if child.type == "text" and not child.content:
                continue  # what is left of a `**` pair: shows nothing
            kinds.append(child.type)
            if child.type == "text":
                text.append(child.content)
    return kinds, "".join(text)


def _one_line(value: str) -> str:
    return " ".join(value.split())  # how a browser shows any run of whitespace


@pytest.mark.parametrize("value", HOSTILE_TEXT)
def test_literal_markdown_displays_the_value_itself(value):
    shown = render.literal(value)
    kinds, text = _plain(shown)
    if _one_line(value):
        assert kinds == ["paragraph_open", "inline", "text", "paragraph_close"], kinds
    assert text == _one_line(value)
    assert "\n" not in shown and ":material/" not in shown and "](" not in shown
    # inside our own formatting it stays text too: bold label, heading (st.title)
    if _one_line(value):
        kinds, text = _plain(f"Signed in as **{shown}**")
        assert kinds == [
            *("paragraph_open", "inline", "text"),
            *("strong_open", "text", "strong_close", "paragraph_close"),
        ]
        assert text == f"Signed in as {_one_line(value)}"
        kinds, text = _plain(f"# Case {shown}")
        assert kinds == ["heading_open", "inline", "text", "heading_close"]
        assert text == f"Case {_one_line(value)}"


def test_the_hostile_examples_are_markup_without_literal():
    """The examples do change rendering when not escaped (the test above tests something)."""
    markup = {"link_open", "image", "html_inline", "html_block", "strong_open", "em_open"}
    markup |= {"code_inline", "heading_open", "bullet_list_open", "s_open", "table_open"}
    changed = [v for v in HOSTILE_TEXT if set(_plain(v)[0]) & markup]
    assert len(changed) >= 8 and HOSTILE_TEXT[0] in changed


@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Co", "Cn"))))
@settings(max_examples=300, deadline=None)
def test_literal_round_trips_any_text(value):
    kinds, text = _plain(render.literal(value))
    assert set(kinds) <= {"paragraph_open", "inline", "text", "paragraph_close"}, kinds
    assert text == _one_line(value).replace("\x00", "\ufffd")


def test_literal_takes_any_value():
    assert render.literal(None) == "None"
    assert render.literal(3) == "3"
    assert render.literal("dr_lee") == "dr\\_lee"
    assert render.literal("a\\b") == "a\\\\b"

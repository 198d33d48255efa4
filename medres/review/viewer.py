"""The case view's scan viewer (Streamlit): study context, window presets and W/L, slices
per plane, Grad-CAM overlay, and a picture the reader can zoom, pan, invert and read
pixel values from.

``show(case)`` draws the scan of one case (a row of :meth:`ReviewStore.case`) with its
controls, or a message saying why it cannot be shown.

Pixels travel inline: the windowed picture (PNG) and the slice's stored values go to
the browser inside the page's websocket messages, drawn by a custom component
(``viewer.js``, ``viewer.css``); nothing is served at a ``/media/`` address, which any
client could fetch without a session, even after sign-out. Zoom, pan, invert and the
readout run in the browser, without a rerun. Keys (anywhere on the page but in a text
field): ``1``–``9`` window presets, ``O`` Grad-CAM overlay, ``I`` invert, ``+``/``-``
zoom, ``0`` fit, PageUp / PageDown the slice before / after.
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import streamlit as st
from PIL import Image
from pydicom.errors import InvalidDicomError

from medres.errors import MedresError
from medres.io import read_scan
from medres.io.names import real_path
from medres.review import render

MANUAL = "manual"
UPSAMPLED = 4.0  # say so when one matrix pixel spans this many screen pixels or more
HTML = """<div class="medres-viewer">
  <div class="tools">
    <button type="button" data-part="zoom-out" title="Zoom out (−)">−</button>
    <span data-part="zoom">100%</span>
    <button type="button" data-part="zoom-in" title="Zoom in (+, mouse wheel)">+</button>
    <button type="button" data-part="reset" title="Fit the picture (0)">Reset</button>
    <button type="button" data-part="invert" aria-pressed="false" title="Invert (I)">Invert</button>
    <span class="notice" data-part="notice"></span>
  </div>
  <canvas data-part="canvas" role="img"></canvas>
  <div class="readout" data-part="readout" aria-live="polite"></div>
  <div class="readout" data-part="pinned"></div>
  <div class="hint" data-part="keys"></div>
</div>"""


def _asset(name: str) -> str:
    return resources.files("medres.review").joinpath(name).read_text(encoding="utf-8")


_picture = st.components.v2.component(
    "medres_scan_viewer", html=HTML, css=_asset("viewer.css"), js=_asset("viewer.js")
)


@st.cache_resource(max_entries=8, show_spinner="Reading the scan…")
def load_scan(path: str, input_hash: str) -> render.DisplayScan:
    """The scan from its original file (``input_hash`` keys the cache to its content),
    with the study's date and description from its DICOM header when it has one.

    Shared by every session and never changed (a resource, not a copy per rerun as
    ``st.cache_data`` would make: unpickling a 512 x 512 x 300 CT takes about 0.3 s)."""
    original = real_path(path)  # a name's \xNN escapes undone
    scan = render.display_scan(read_scan(original))
    scan.values.setflags(write=False)  # shared between sessions: read only
    return replace(scan, facts={**study_header(original), **scan.facts})


def study_header(path: str | Path) -> dict[str, str]:
    """``study_date`` (YYYY-MM-DD) and ``study_description`` from the DICOM header of
    ``path`` (a file, or the first file of a series folder) where it has them; empty for
    anything else."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files[:8]:  # a folder's first files: a stray non-DICOM file is skipped
        try:
            ds = pydicom.dcmread(
                file, stop_before_pixels=True, specific_tags=["StudyDate", "StudyDescription"]
            )
        except (InvalidDicomError, OSError, ValueError):
            continue
        date = str(ds.get("StudyDate") or "").strip()
        facts = {"study_description": str(ds.get("StudyDescription") or "").strip()}
        if len(date) == 8 and date.isdigit():
            facts["study_date"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        return {name: value for name, value in facts.items() if value}
    return {}


def study_context(case: dict, scan: render.DisplayScan) -> str:
    """One line about the study, for Markdown (every value through
    :func:`render.literal`): modality, date, descriptions, body part, matrix or slice
    count and pixel spacing. Never the patient's name or id."""
    facts = scan.facts
    parts = [case.get("modality") or scan.modality or "unknown modality"]
    parts += [facts[name] for name in render.CONTEXT_FACTS if name in facts]
    if scan.is_3d:
        x, y, z = scan.values.shape
        parts.append(f"{z} axial slices of {y} × {x}")
    else:
        parts.append(f"{scan.values.shape[0]} × {scan.values.shape[1]} pixels")
    spacing = " × ".join(f"{mm:.3g}" for mm in scan.spacing_mm)
    parts.append(f"{'voxel' if scan.is_3d else 'pixel'} {spacing} mm")
    return " · ".join(render.literal(part) for part in parts)


def upsampling_notice(shape: tuple[int, int], mm: tuple[float, float]) -> str | None:
    """What to tell the reader when a ``shape`` (rows, cols) picture is blown up to
    :data:`render.DISPLAY_SIZE` pixels (each matrix pixel :data:`UPSAMPLED` screen
    pixels or more), else None."""
    factor = render.upsampling(shape, mm)
    if factor < UPSAMPLED:
        return None
    return f"{shape[0]} × {shape[1]} pixels shown at {factor:.0f}×: fine detail is not in the data."


def png_base64(picture: np.ndarray) -> str:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) picture as base64 PNG text."""
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG", compress_level=1)  # fast, lossless
    return base64.b64encode(out.getvalue()).decode("ascii")


def encode_values(values: np.ndarray) -> dict:
    """A (rows, cols[, channels]) slice of stored values for the browser: little-endian
    ``int16`` when every value is a whole number that fits (CT in HU, most scans), else
    ``float32``, row by row, channels interleaved; ``{dtype, base64, channels}``."""
    values = np.asarray(values)
    channels = values.shape[2] if values.ndim == 3 else 1
    whole = np.array_equal(values, np.round(values))
    fits = values.size and values.min() >= -32768 and values.max() <= 32767
    dtype = "int16" if whole and fits else "float32"
    raw = np.ascontiguousarray(values, dtype="<i2" if dtype == "int16" else "<f4").tobytes()
    return {"dtype": dtype, "base64": base64.b64encode(raw).decode("ascii"), "channels": channels}


def payload(
    scan: render.DisplayScan,
    plane: str,
    index: int,
    width: float,
    level: float,
    heat: np.ndarray | None = None,
    opacity: float = 0.4,
    presets: list[str] | None = None,
    overlay_ready: bool = False,
) -> dict:
    """What ``viewer.js`` draws for slice ``index`` (0-based) of ``plane``: the windowed
    picture and the Grad-CAM layer (PNG, at the matrix's own size; the browser scales
    them to :data:`render.DISPLAY_SIZE` px with true proportions), the stored values
    and their unit, where each pixel lies in the scan file's array, the preset names
    (keys 1..9) and whether ``O`` may toggle the overlay."""
    values = render.take_slice(scan.values, scan, plane, index)
    origin, per_row, per_col = render.source_index(scan, plane, index)
    n = render.slice_count(scan, plane)
    data = {
        "image": png_base64(render.apply_window(values, width, level)),
        "overlay": None,
        "shape": list(values.shape[:2]),
        "mm": list(render.pixel_mm(scan, plane)),
        "size": render.DISPLAY_SIZE,
        "values": encode_values(values),
        "unit": render.value_unit(scan),
        "origin": list(origin),
        "per_row": list(per_row),
        "per_col": list(per_col),
        "label": f"Scan, {plane} slice {index + 1} of {n}" if scan.is_3d else "Scan",
        "presets": list(presets or [])[:9],
        "overlay_ready": overlay_ready,
    }
    if heat is not None:
        layer = render.overlay_rgba(render.take_slice(heat, scan, plane, index), opacity)
        data["overlay"] = png_base64(layer)
    return data


def _set_preset(key: str, presets: dict[str, tuple[float, float]], name: str) -> None:
    state = st.session_state
    state[f"{key}_preset"] = name
    state[f"{key}_width"], state[f"{key}_level"] = presets[name]


def window_controls(
    scan: render.DisplayScan, presets: dict[str, tuple[float, float]], key: str
) -> tuple[float, float]:
    """Preset selector plus width / level sliders; a preset sets the sliders, moving a
    slider switches the preset to manual. Returns (width, level)."""
    names = [*presets, MANUAL]
    width_range, level_range, step = render.window_ranges(scan, presets)
    state = st.session_state
    if f"{key}_preset" not in state:
        _set_preset(key, presets, names[0])

    def preset_chosen() -> None:
        chosen = state[f"{key}_preset"]
        if chosen in presets:
            _set_preset(key, presets, chosen)

    def slider_moved() -> None:
        state[f"{key}_preset"] = MANUAL

    keys = ", ".join(f"{n} {name}" for n, name in enumerate(presets, start=1) if n <= 9)
    columns = st.columns([4, 3, 3])
    columns[0].selectbox(
        "Window preset",
        names,
        key=f"{key}_preset",
        on_change=preset_chosen,
        help=f"Keys: {render.literal(keys)}. {render.literal(scan.modality or 'unknown')} "
        "modality; CT has lung, soft tissue, bone and brain windows, other scans a "
        "percentile auto-window",
    )
    width = columns[1].slider(
        "Window width", *width_range, step=step, key=f"{key}_width", on_change=slider_moved
    )
    level = columns[2].slider(
        "Window level", *level_range, step=step, key=f"{key}_level", on_change=slider_moved
    )
    return width, level


def overlay_controls(
    case: dict, scan: render.DisplayScan, key: str
) -> tuple[np.ndarray | None, float, bool]:
    """The Grad-CAM toggle (off until asked) and opacity, where the case has a map.
    Returns (map to draw or None, opacity, whether the case has a map)."""
    heat = None
    if case.get("heatmap_map"):
        try:
            heat = render.load_heatmap(case["heatmap_map"], scan)
        except (OSError, ValueError) as e:
            st.warning(f"The Grad-CAM map cannot be shown: {render.literal(e)}")
    if heat is None:
        return None, 0.0, False
    left, right = st.columns([1, 2])
    shown = left.toggle(
        "Grad-CAM overlay",
        value=False,
        key=f"{key}_heat",
        help="Red marks the regions that weighed most for the predicted class. Key: O",
    )
    opacity = right.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key=f"{key}_opacity")
    return (heat if shown else None), opacity, True


def _picture_events(
    key: str,
    view: str,
    presets: dict[str, tuple[float, float]],
    slider: str | None = None,
    count: int = 1,
):
    """Callbacks for the viewer's keys that change Streamlit state (they run before the
    rerun, so they may set widgets' values): a preset by number, the overlay by ``O``,
    the slice (the ``slider`` key, 1..``count``; None for a 2D image) by PageUp /
    PageDown."""
    state = st.session_state

    def preset_key() -> None:
        name = state[view].get("preset")
        if name in presets:
            _set_preset(key, presets, name)

    def overlay_key() -> None:
        state[f"{key}_heat"] = not state.get(f"{key}_heat", False)

    def slice_key() -> None:
        step = (state[view].get("slice") or {}).get("step", 0)
        state[slider] = int(np.clip(state.get(slider, count // 2 + 1) + step, 1, count))

    events = {"on_preset_change": preset_key, "on_overlay_change": overlay_key}
    return {**events, "on_slice_change": slice_key} if slider else events


def show(case: dict) -> None:
    """The scan with its controls, or a message saying why it cannot be shown.

    Top to bottom: the study, the picture (a tab per plane for a volume, its slice
    slider below it), then the window and overlay controls, so that the picture sits
    as high as it can (the controls also answer to keys)."""
    try:
        scan = load_scan(case["path"], case["input_hash"])
    except MedresError as e:
        st.error(f"The scan cannot be shown: {render.literal(e)}")
        return
    key = f"case{case['case_id']}"
    st.caption(study_context(case, scan))
    picture_area = st.container()
    presets = render.window_presets(scan)
    width, level = window_controls(scan, presets, key)  # drawn below, read first
    heat, opacity, has_map = overlay_controls(case, scan, key)

    def picture(plane: str, index: int, slider: str | None = None, count: int = 1) -> None:
        view = f"{key}_view_{plane}"
        data = payload(scan, plane, index, width, level, heat, opacity, list(presets), has_map)
        data["notice"] = upsampling_notice(tuple(data["shape"]), tuple(data["mm"]))
        data["slices"] = slider is not None
        _picture(key=view, data=data, **_picture_events(key, view, presets, slider, count))

    with picture_area:
        if not scan.is_3d:
            picture("axial", 0)
            return
        tabs = st.tabs([p.title() for p in render.PLANES], key=f"{key}_plane", on_change="rerun")
        for plane, tab in zip(render.PLANES, tabs, strict=True):
            with tab:  # every slider is drawn (their positions are kept); the picture only
                n = render.slice_count(scan, plane)  # in the open tab (one payload a rerun)
                slider = f"{key}_{plane}"
                index = st.session_state.get(slider, n // 2 + 1)  # the slider comes below
                if tab.open is not False:
                    picture(plane, index - 1, slider, n)
                index = st.slider(f"{plane.title()} slice", 1, n, n // 2 + 1, key=slider)
                st.caption(f"{plane} {index}/{n}")

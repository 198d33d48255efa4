"""The case view's scan viewer (Streamlit): window presets and W/L, slices per plane,
Grad-CAM overlay.

``show(case)`` draws the scan of one case (a row of :meth:`ReviewStore.case`) with its
controls, or a message saying why it cannot be shown.
"""

from __future__ import annotations

import streamlit as st

from medres.errors import MedresError
from medres.io import read_scan
from medres.io.names import real_path
from medres.review import render

MANUAL = "manual"


@st.cache_data(max_entries=16, show_spinner="Reading the scan…")
def load_scan(path: str, input_hash: str) -> render.DisplayScan:
    """The scan from its original file (``input_hash`` keys the cache to its content)."""
    return render.display_scan(read_scan(real_path(path)))  # a name's \xNN escapes undone


def window_controls(scan: render.DisplayScan, key: str) -> tuple[float, float]:
    """Preset selector plus width / level sliders; a preset sets the sliders, moving a
    slider switches the preset to manual. Returns (width, level)."""
    presets = render.window_presets(scan)
    names = [*presets, MANUAL]
    width_range, level_range, step = render.window_ranges(scan, presets)
    state = st.session_state
    if f"{key}_preset" not in state:
        state[f"{key}_preset"] = names[0]
        state[f"{key}_width"], state[f"{key}_level"] = presets[names[0]]

    def preset_chosen() -> None:
        chosen = state[f"{key}_preset"]
        if chosen in presets:
            state[f"{key}_width"], state[f"{key}_level"] = presets[chosen]

    def slider_moved() -> None:
        state[f"{key}_preset"] = MANUAL

    columns = st.columns(3)
    columns[0].selectbox(
        "Window preset",
        names,
        key=f"{key}_preset",
        on_change=preset_chosen,
        help=f"{render.literal(scan.modality or 'unknown')} modality; CT has lung, soft "
        "tissue, bone and brain windows, other scans a percentile auto-window",
    )
    width = columns[1].slider(
        "Window width", *width_range, step=step, key=f"{key}_width", on_change=slider_moved
    )
    level = columns[2].slider(
        "Window level", *level_range, step=step, key=f"{key}_level", on_change=slider_moved
    )
    return width, level


def show(case: dict) -> None:
    """The scan with its controls, or a message saying why it cannot be shown."""
    try:
        scan = load_scan(case["path"], case["input_hash"])
    except MedresError as e:
        st.error(f"The scan cannot be shown: {render.literal(e)}")
        return
    key = f"case{case['case_id']}"
    width, level = window_controls(scan, key)
    heat = None
    if case.get("heatmap_map"):
        try:
            heat = render.load_heatmap(case["heatmap_map"], scan)
        except (OSError, ValueError) as e:
            st.warning(f"The Grad-CAM map cannot be shown: {render.literal(e)}")
    opacity = 0.0
    if heat is not None:
        left, right = st.columns([1, 2])
        shown = left.toggle("Grad-CAM overlay", value=False, key=f"{key}_heat")
        opacity = right.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key=f"{key}_opacity")
        if not shown:
            heat = None
    if not scan.is_3d:
        st.image(render.render_view(scan, "axial", 0, width, level, heat, opacity))
        st.caption("Grad-CAM: red marks the regions that weighed most for the predicted class.")
        return
    for plane, tab in zip(render.PLANES, st.tabs([p.title() for p in render.PLANES]), strict=True):
        with tab:
            n = render.slice_count(scan, plane)
            index = st.slider(f"{plane.title()} slice", 1, n, n // 2 + 1, key=f"{key}_{plane}")
            picture = render.render_view(scan, plane, index - 1, width, level, heat, opacity)
            st.image(picture, caption=f"{plane} {index}/{n}")

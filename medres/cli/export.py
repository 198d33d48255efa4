"""`medres export`: a bundle's network for a compiled runtime, verified against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medres.cli.common import app, console, user_errors


@app.command("export")
def export_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    runtime: Annotated[
        str, typer.Option(help="Runtime to export for: onnx (ONNX Runtime, fp32).")
    ] = "onnx",
    cohort: Annotated[
        Path | None,
        typer.Option(
            help="Cohort manifest whose val split verifies the export (default: the cohort "
            "that fitted the bundle's calibration)."
        ),
    ] = None,
) -> None:
    """Export the bundle's network for a faster runtime, into the bundle, once it gives
    torch's calibrated probabilities on the validation scans.

    Writes BUNDLE/model.onnx (opset 18, fp32, any batch size) only when, on every scan
    of the validation split, its calibrated probabilities differ from torch's by at most
    1e-4; records it in bundle.json (checksum, the weights it came from, the difference
    found, the scans) and in the model card. Otherwise it exits 2 with the difference
    found and writes nothing. `medres predict --runtime onnx` then runs it; a changed
    model.onnx is refused when the bundle is loaded. Needs `pip install "medres[onnx]"`.

    Example:

        medres export bundles/pneumonia --runtime onnx
        medres predict bundles/pneumonia /data/tonight -o predictions/tonight --runtime onnx
    """
    from medres.predict.export import export_bundle

    with user_errors():
        record = export_bundle(bundle, runtime, cohort=cohort)
    verified = record["verified"]
    console.print(
        f"{runtime}: {bundle / record['file']} accepted: {verified['quantity']} within "
        f"{verified['max_abs_diff']:.2g} of torch's on {verified['scans']} validation scans "
        f"(tolerance {verified['tolerance']:g}); recorded in {bundle / 'bundle.json'}"
    )

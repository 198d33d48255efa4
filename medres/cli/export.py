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
        str,
        typer.Option(
            help="Runtime to export for: onnx (ONNX Runtime: model.onnx) or openvino "
            "(OpenVINO: model.openvino.xml and .bin, converted from the ONNX graph; needs "
            '`pip install "medres[openvino]"`).'
        ),
    ] = "onnx",
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantise to int8 (calibrated on training scans), refit the trust layer on "
            "the validation scans and keep it only if it passes the int8 gate; `medres "
            "predict --runtime onnx-int8` (openvino: openvino-int8) runs it.",
        ),
    ] = False,
    calibration_scans: Annotated[
        int,
        typer.Option(help="--int8: at most this many training scans set the int8 ranges."),
    ] = 200,
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

    --runtime openvino converts that same ONNX graph to OpenVINO IR
    (BUNDLE/model.openvino.xml and model.openvino.bin, fp32 weights) and accepts it on
    the same 1e-4 check; `medres predict --runtime openvino` runs it with OpenVINO on the
    CPU. Needs `pip install "medres[openvino]"`.

    With --int8 it quantises the network (static, QDQ, per-channel int8 weights; the
    activation ranges from up to --calibration-scans training scans, preprocessed as
    predict does), refits the temperature, conformal quantile and referral threshold on
    the validation scans (the binary operating point stays the bundle's) and writes
    BUNDLE/model.int8.onnx with that trust layer (BUNDLE/onnx-int8/) only when, against
    torch on validation, AUROC drops by at most 0.005, ECE rises by at most 0.01,
    conformal coverage is at least its target minus 0.02 and at least 99 % of predicted
    classes are unchanged. Otherwise it exits 2 with all four figures and writes nothing.
    With --runtime openvino --int8 the same int8 (QDQ) graph runs in OpenVINO, which
    executes its quantised layers in int8, under the same gate:
    BUNDLE/model.int8.openvino.xml/.bin and BUNDLE/openvino-int8/.

    Example:

        medres export bundles/pneumonia --runtime onnx
        medres predict bundles/pneumonia /data/tonight -o predictions/tonight --runtime onnx
        medres export bundles/pneumonia --runtime onnx --int8
        medres predict bundles/pneumonia /data/tonight -o predictions/int8 --runtime onnx-int8
        medres export bundles/pneumonia --runtime openvino
        medres predict bundles/pneumonia /data/tonight -o predictions/ov --runtime openvino
    """
    from medres.predict.export import export_bundle
    from medres.predict.quantize import export_int8

    with user_errors():
        if int8:
            record = export_int8(
                bundle, runtime, cohort=cohort, calibration_scans=calibration_scans
            )
        else:
            record = export_bundle(bundle, runtime, cohort=cohort)
    verified = record["verified"]
    if int8:
        checks = "\n".join(f"  {check}: ok" for check in verified["checks"])
        figures = verified["figures"]
        if figures.get("calls_unchanged") is not None:
            checks += (
                f"\n  call at the operating point unchanged from torch on "
                f"{figures['calls_unchanged']:.2%} of scans (not gated)"
            )
        console.print(
            f"{runtime} --int8: {bundle / record['file']} accepted on {verified['scans']} "
            f"validation scans, its trust layer in {bundle / record['trust']}; recorded in "
            f"{bundle / 'bundle.json'}\n{checks}",
            highlight=False,
        )
        return
    console.print(
        f"{runtime}: {bundle / record['file']} accepted: {verified['quantity']} within "
        f"{verified['max_abs_diff']:.2g} of torch's on {verified['scans']} validation scans "
        f"(tolerance {verified['tolerance']:g}); recorded in {bundle / 'bundle.json'}"
    )

"""The model bundle on disk (DESIGN §3): save, load, verify.

A bundle is a folder::

    bundle.json         id, parent_id, task, classes, class_names, model name + arguments,
                        preprocessing spec, operating point, training cohort fingerprint,
                        versions, and the sha256 of every file below but bundle.json.sha256
    bundle.json.sha256  the sha256 of bundle.json itself, in ``sha256sum`` format
                        (``<64 hex digits>  bundle.json``): ``sha256sum -c bundle.json.sha256``
                        in the folder verifies it
    weights.safetensors the selected epoch's weights (no pickle)
    config.json         the resolved training configuration
    metrics.json        validation (and test, when the cohort has one) metrics with CIs
    metrics.csv         per-epoch training history
    model_card.md       intended use, data, metrics, limitations
    calibration.json    classifiers: calibration, conformal quantiles, referral threshold,
                        OOD threshold (:class:`medres.uncertainty.trust.Trust`)
    ood.safetensors     classifiers: the OOD model's class means and precision matrix
    frozen_test.json    the test patients (salted hashes) and scans no retraining may
                        train on (:mod:`medres.frozen`)
    training_cohort.parquet  retrained bundles: the cohort trained on
    model.onnx          after ``medres export --runtime onnx``: the model for ONNX Runtime,
                        recorded with what it was verified against (``runtimes``)
    model.int8.onnx     after ``--runtime onnx --int8``: its int8 model, with its own trust
                        layer in ``onnx-int8/``
    model.openvino.xml  after ``medres export --runtime openvino``: the model as OpenVINO IR
    model.openvino.bin  (graph and weights; ``--int8``: ``model.int8.openvino.xml/.bin``
                        and ``openvino-int8/``)

:func:`write_manifest` is the only writer of ``bundle.json``: it writes the sidecar, then
``bundle.json`` last, so a folder without ``bundle.json`` is not a bundle.
:func:`verify_bundle` refuses a bundle whose ``bundle.json`` fails its sidecar (it was
edited: a changed threshold, renamed classes, another task) or has none (a bundle from a
medres before the sidecar: retrain it), and one whose files fail their checksums, naming
the file. :func:`load_bundle` also checks the manifest's fields by type
(:class:`Manifest`) and against the weights: the task and classes must give the head's
number of outputs, a threshold is a probability of a binary task, the input grid
stays within :func:`medres.limits.max_voxels`, and ``class_names`` (optional: the display
names of the classes, in their order; a bundle without it names each class by its
label, :attr:`Bundle.class_names`) holds one distinct name per class. Each refusal is a
:class:`BundleError` naming the field, what was found and what was expected.

Modules: :mod:`~medres.bundle.layout` (file names, seal, verification),
:mod:`~medres.bundle.manifest` (the typed ``bundle.json``), :mod:`~medres.bundle.load`
(:class:`Bundle`, :func:`load_bundle`) and :mod:`~medres.bundle.save`.
"""

from medres.bundle.layout import (
    FORMAT,
    HEAD,
    MANIFEST,
    MANIFEST_SUM,
    OPTIONAL,
    REQUIRED,
    RUNTIME_FILES,
    TRAINING_COHORT,
    WEIGHTS,
    is_bundle,
    model_files,
    verify_bundle,
    write_manifest,
)
from medres.bundle.load import (
    Bundle,
    calibration_cohort,
    load_bundle,
    read_manifest,
    training_cohort,
)
from medres.bundle.manifest import (
    Manifest,
    ManifestModel,
    ManifestRuntime,
    ManifestTarget,
    ManifestTraining,
    TrainedOn,
    check_class_names,
    validate_manifest,
)
from medres.bundle.save import add_runtime, save_bundle, update_bundle, versions

__all__ = [
    "FORMAT",
    "HEAD",
    "MANIFEST",
    "MANIFEST_SUM",
    "OPTIONAL",
    "REQUIRED",
    "RUNTIME_FILES",
    "TRAINING_COHORT",
    "WEIGHTS",
    "Bundle",
    "Manifest",
    "ManifestModel",
    "ManifestRuntime",
    "ManifestTarget",
    "ManifestTraining",
    "TrainedOn",
    "add_runtime",
    "calibration_cohort",
    "check_class_names",
    "is_bundle",
    "load_bundle",
    "model_files",
    "read_manifest",
    "save_bundle",
    "training_cohort",
    "update_bundle",
    "validate_manifest",
    "verify_bundle",
    "versions",
    "write_manifest",
]

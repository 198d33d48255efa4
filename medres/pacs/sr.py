"""One scan's prediction as a Comprehensive 3D SR following TID 1500 (Measurement Report).

The report holds one measurement group (TID 1501) whose items are coded in the private
scheme :data:`CODING_SCHEME`:

- ``Predicted class``: the class shown, a code whose value is the class's label and
  whose meaning is its display name (``normal``; the bundle's ``class_names``);
- ``Calibrated probability of the predicted class``: a numeric measurement in UCUM ``1``
  (no units), in [0, 1];
- ``Conformal prediction set member``: one item per class of the conformal set;
- ``Out of distribution`` and ``Referral to a clinician recommended``: SNOMED CT Yes / No;

with the algorithm (TID 4019: name ``medres``, its version, the bundle id and checksum as
parameters) and the source images. TID 1500's report-level ``Qualitative Evaluations``
container (UMLS C0034375) holds the free text: the reason for referral and the notice
that the result is not for diagnostic use unless validated locally. The device observer
(TID 1004) is the bundle: its UID comes from the bundle id and checksum, so every
retrained bundle is another device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

CODING_SCHEME = "99MEDRES"
"""Private coding scheme designator of medres's concepts and class codes (a ``99``
prefix marks a private scheme, PS3.16 section 8.2)."""

NOT_FOR_DIAGNOSIS = "Not for diagnostic use unless validated locally"

PREDICTED_CLASS = Code("CLASS", CODING_SCHEME, "Predicted class")
PROBABILITY = Code("PROB", CODING_SCHEME, "Calibrated probability of the predicted class")
CONFORMAL_MEMBER = Code("CSET", CODING_SCHEME, "Conformal prediction set member")
OUT_OF_DISTRIBUTION = Code("OOD", CODING_SCHEME, "Out of distribution")
REFERRAL = Code("REFER", CODING_SCHEME, "Referral to a clinician recommended")
REFERRAL_REASON = Code("REFERWHY", CODING_SCHEME, "Reason for referral")
USAGE_NOTICE = Code("NOTICE", CODING_SCHEME, "Usage notice")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")

_SH_MAX = 16  # characters of a Code Value (VR SH)
_LO_MAX = 64  # characters of a Code Meaning (VR LO)


@dataclass(frozen=True)
class Producer:
    """Who made the results: medres and the bundle that predicted them.

    Attributes:
        version: medres's version.
        bundle_id: the bundle's 32-hex id.
        bundle_checksum: sha256 of its ``bundle.json``.
    """

    version: str
    bundle_id: str
    bundle_checksum: str

    @property
    def device_uid(self) -> str:
        """The device observer's UID: derived from the bundle id and checksum."""
        return generate_uid(entropy_srcs=["medres device", self.bundle_id, self.bundle_checksum])


@dataclass(frozen=True)
class Identity:
    """One result object's place: its series and instance UIDs and numbers, and the series
    description (derived by :mod:`medres.pacs.results`)."""

    series_uid: str
    sop_uid: str
    series_number: int
    instance_number: int
    series_description: str

    def highdicom(self) -> dict[str, object]:
        """The arguments every highdicom object constructor takes for these."""
        return {
            "series_instance_uid": self.series_uid,
            "series_number": self.series_number,
            "sop_instance_uid": self.sop_uid,
            "instance_number": self.instance_number,
        }


@dataclass(frozen=True)
class Finding:
    """One scan's prediction as ``predictions.parquet`` holds it.

    Attributes:
        predicted_class: the class shown (``predicted_class``).
        confidence: its calibrated probability, in [0, 1].
        conformal_set: the classes of the conformal set.
        ood: out of distribution.
        refer: sent to a clinician; ``refer_reason`` says why ("" when not referred).
        class_names: ``{class: display name}`` (the bundle's); a class missing from it is
            named by its label.
    """

    predicted_class: str
    confidence: float
    conformal_set: tuple[str, ...]
    ood: bool
    refer: bool
    refer_reason: str
    class_names: Mapping[str, str] = field(default_factory=dict)

    def code(self, cls: str) -> Code:
        """The code of class ``cls`` (:func:`class_code`) with its display name."""
        return class_code(cls, self.class_names.get(cls))


def class_code(label: str, name: str | None = None) -> Code:
    """The private code of a class: its label as the value when it fits 16 characters,
    else ``H`` + 15 hex digits of the label's sha256; its display name ``name`` (default:
    the label) as the meaning, cut to 64 characters."""
    value = label if 0 < len(label) <= _SH_MAX and "\\" not in label else None
    value = value or "H" + hashlib.sha256(label.encode()).hexdigest()[: _SH_MAX - 1]
    meaning = (name or label).replace("\\", "/")[:_LO_MAX]
    return Code(value, CODING_SCHEME, meaning or "(empty)")


def structured_report(
    sources: Sequence[Dataset],
    finding: Finding,
    producer: Producer,
    identity: Identity,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``finding`` on ``sources`` (the scan's DICOM headers, one per
    file; pixels not needed), in their study with their patient module."""
    algorithm = hd.sr.AlgorithmIdentification(
        name="medres",
        version=producer.version,
        parameters=[f"bundle_id={producer.bundle_id}", f"bundle_sha256={producer.bundle_checksum}"],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=producer.device_uid,
            name="medres",
            manufacturer_name="medres",
            model_name=f"bundle {producer.bundle_id}",
        ),
    )
    yes_no = {True: codes.SCT.Yes, False: codes.SCT.No}
    evaluations = [
        hd.sr.QualitativeEvaluation(PREDICTED_CLASS, finding.code(finding.predicted_class))
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(CONFORMAL_MEMBER, finding.code(cls))
        for cls in finding.conformal_set
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(OUT_OF_DISTRIBUTION, yes_no[finding.ood]),
        hd.sr.QualitativeEvaluation(REFERRAL, yes_no[finding.refer]),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[identity.sop_uid, "tracking"]),
            identifier="medres prediction",
        ),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY,
                value=float(finding.confidence),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_free_text(finding))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources),
        content=report[0],
        **identity.highdicom(),
        manufacturer="medres",
        is_complete=True,
    )
    sr.SeriesDescription = identity.series_description
    declare_coding_scheme(sr)
    return sr


def declare_coding_scheme(dataset: Dataset) -> None:
    """Name :data:`CODING_SCHEME` in ``dataset``'s Coding Scheme Identification Sequence
    (SOP Common module), as a private scheme must be."""
    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = "medres private codes"
    item.CodingSchemeResponsibleOrganization = "medres"
    dataset.CodingSchemeIdentificationSequence = [item]


def _free_text(finding: Finding) -> hd.sr.ContainerContentItem:
    """TID 1500's report-level Qualitative Evaluations: the reason for referral (when
    referred) and the usage notice, as TEXT items."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    texts = [(USAGE_NOTICE, NOT_FOR_DIAGNOSIS)]
    if finding.refer and finding.refer_reason:
        texts.insert(0, (REFERRAL_REASON, finding.refer_reason))
    container.ContentSequence = [
        hd.sr.TextContentItem(
            name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for name, value in texts
    ]
    return container

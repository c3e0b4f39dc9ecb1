"""Results as DICOM objects a PACS can store: a Structured Report, a lung Segmentation, a Grad-CAM capture.

For each DICOM input, :class:`DicomWriter` builds with highdicom (the optional ``pacs`` extra):

* a Comprehensive 3D SR following TID 1500 (Measurement Report): one measurement group per class
  (tracking identifier ``cxrtl probability of CLASS``, finding type = the class, its probability as a
  numeric measurement, membership of the conformal prediction set and the operating-point threshold and
  flag where the model carries them) and a summary group (``cxrtl classification``: the predicted class as
  its coded finding, the out-of-distribution flag where there is one), each naming the algorithm (TID 4019:
  ``cxrtl``, its version, the model name and the checkpoint's SHA-256), and a comment saying
  :data:`DISCLAIMER`;
* a binary Segmentation of the lung mask the segmenter predicted, on the source image's pixel grid;
* a Secondary Capture of the Grad-CAM overlay, with :data:`DISCLAIMER` burned into the pixels in a band
  below the image (``BurnedInAnnotation`` YES).

Each object joins the source's study (highdicom copies the patient and study attributes the IOD requires
from the source header that :func:`cxrtl.inference.dicom_source.read_source` trimmed to them), sits in a
new series per kind (:data:`SERIES`; one series per study, kind and run), references its source image by
Study, Series and SOP Instance UID, and gets UIDs from pydicom's generator. Class names are coded in the
private scheme :data:`SCHEME` (code value and meaning = the class name), which each SR declares in its
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CxrtlError
from .dicom_source import check_out_dir, orientation, reference

log = logging.getLogger(__name__)

DISCLAIMER = "Research use only; not for diagnostic use"
EXTRA = "pip install 'cxrtl[pacs]'"
SCHEME = "99CXRTL"  # a private coding scheme ("99" prefix): the model's classes and cxrtl's own items
# kind -> (series number, series description); the descriptions carry the disclaimer too
SERIES = {
    "SR": (9001, "cxrtl classification - research use only"),
    "SEG": (9002, "cxrtl lung mask - research use only"),
    "SC": (9003, "cxrtl Grad-CAM - research use only"),
}
CLASSIFICATION = "cxrtl classification"  # the tracking identifier of the SR's summary group
PROBABILITY = "cxrtl probability of {}"  # ... and of each class's group
SUFFIX = {"SR": ".sr.dcm", "SEG": ".seg.dcm", "SC": ".sc.dcm"}


def require_highdicom():
    """The highdicom module, or a one-line error naming the extra that brings it."""
    try:
        import highdicom
    except ImportError:
        raise CxrtlError(f"writing DICOM results needs highdicom; install it with `{EXTRA}`") from None
    return highdicom


def _lo(text: str) -> str:
    """A value for a 64-character LO element."""
    return text if len(text) <= 64 else text[:61] + "..."


# ------------------------------------------------------------------------------------------ the codes
def class_code(name: str):
    """The coded concept of one of the model's classes (private scheme, code value = meaning = the name)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=name, scheme_designator=SCHEME, meaning=_lo(name))


def item_code(key: str):
    """cxrtl's own SR concept names (:data:`ITEMS`), in the private scheme."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=key, scheme_designator=SCHEME, meaning=ITEMS[key])


ITEMS = {
    "INSET": "In conformal prediction set",
    "OPTHR": "Operating point threshold",
    "OPFLAG": "At or above operating point",
    "OOD": "Out of distribution",
}


@dataclass(frozen=True)
class ModelIdentity:
    """What every object says about the model that made it."""

    name: str
    sha256: str
    segmenter: str | None = None
    version: str = __version__

    @classmethod
    def of(cls, predictor, name: str) -> ModelIdentity:
        """The identity of a loaded :class:`~cxrtl.inference.predict.Predictor` (hashes the file it ran)."""
        from ..fsutil import sha256_file

        seg = predictor.decisions.segmenter
        return cls(
            name=name,
            sha256=sha256_file(predictor.source) if predictor.source else "unknown",
            segmenter=seg.name if seg is not None else None,
        )

    def parameters(self) -> list[str]:
        out = [f"model: {self.name}", f"checkpoint sha256: {self.sha256}"]
        if self.segmenter:
            out.append(f"segmenter: {self.segmenter}")
        return out


# ------------------------------------------------------------------------------------------ the writer
class DicomWriter:
    """Builds (and, with an output folder, writes) the result objects of a run's DICOM inputs.

    One writer is one run: each study gets one new series per kind, numbered from :data:`SERIES`.
    """

    def __init__(self, out_dir: str | os.PathLike | None, model: ModelIdentity):
        require_highdicom()
        self.out = Path(out_dir) if out_dir is not None else None
        if self.out is not None:
            check_out_dir(self.out)
        self.model = model
        self._series: dict[tuple[str, str], str] = {}
        self._numbers: dict[str, int] = {}
        self._names: set[str] = set()

    def _series_uid(self, study: str, kind: str) -> tuple[str, int]:
        from highdicom import UID

        key = (study, kind)
        if key not in self._series:
            self._series[key] = str(UID())
        uid = self._series[key]
        self._numbers[uid] = self._numbers.get(uid, 0) + 1
        return uid, self._numbers[uid]

    # --------------------------------------------------------------------------------- objects
    def objects(
        self, source, row, mask: np.ndarray | None = None, cam_png: str | os.PathLike | None = None
    ) -> list[tuple[str, Any]]:
        """``[(kind, dataset)]`` for one source header and its prediction row (SR; SEG with a mask; SC with a CAM)."""
        out = [("SR", self.structured_report(source, row))]
        if mask is not None:
            out.append(("SEG", self.segmentation(source, mask)))
        if cam_png is not None:
            out.append(("SC", self.secondary_capture(source, cam_png)))
        return out

    def write(self, source, row, mask=None, cam_png=None, stem: str | None = None) -> list[tuple[Path, Any]]:
        """Build the objects of one row and write each as ``<stem>.sr.dcm``, ``.seg.dcm``, ``.sc.dcm``."""
        from ..fsutil import atomic_path

        assert self.out is not None, "a writer without an output folder only builds objects"
        stem = stem or Path(row.path).stem or str(source.SOPInstanceUID)
        base, n = stem, 1
        while base in self._names:
            n += 1
            base = f"{stem}-{n}"
        self._names.add(base)
        written = []
        for kind, ds in self.objects(source, row, mask, cam_png):
            path = self.out / (base + SUFFIX[kind])
            with atomic_path(path, suffix=".dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            written.append((path, ds))
        return written

    # --------------------------------------------------------------------------------- SR
    def structured_report(self, source, row):
        """A TID 1500 Measurement Report of one prediction row, in a Comprehensive 3D SR."""
        hd = require_highdicom()
        from highdicom.coding_schemes import CodingSchemeIdentificationItem
        from pydicom.sr.codedict import codes

        sr = hd.sr
        if row.probabilities is None or row.label is None:
            raise CxrtlError(f"{row.path}: no prediction to report")
        algo = sr.AlgorithmIdentification("cxrtl", self.model.version, parameters=self.model.parameters())
        where = [sr.SourceImageForMeasurementGroup.from_source_image(source)]
        yes_no = {True: codes.SCT.Yes, False: codes.SCT.No}
        groups = []
        members = set(row.prediction_set) if row.prediction_set is not None else None
        for name, p in row.probabilities.items():
            measurements = [
                sr.Measurement(name=codes.DCM.Probability, value=float(p), unit=codes.UCUM.NoUnits)
            ]
            evaluations = []
            if members is not None:
                evaluations.append(sr.QualitativeEvaluation(item_code("INSET"), yes_no[name in members]))
            positive = row.positive
            if positive is not None and positive.get("class") == name:
                measurements.append(
                    sr.Measurement(
                        name=item_code("OPTHR"), value=float(positive["threshold"]), unit=codes.UCUM.NoUnits
                    )
                )
                evaluations.append(
                    sr.QualitativeEvaluation(item_code("OPFLAG"), yes_no[bool(positive["flag"])])
                )
            groups.append(
                sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=sr.TrackingIdentifier(identifier=_lo(PROBABILITY.format(name))),
                    finding_type=class_code(name),
                    algorithm_id=algo,
                    source_images=where,
                    measurements=measurements,
                    qualitative_evaluations=evaluations or None,
                )
            )
        ood = _ood_flag(row)
        summary = None if ood is None else [sr.QualitativeEvaluation(item_code("OOD"), yes_no[ood])]
        groups.append(  # the predicted class is this group's Finding (DCM 121071)
            sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=sr.TrackingIdentifier(identifier=CLASSIFICATION),
                finding_type=class_code(row.label),
                algorithm_id=algo,
                source_images=where,
                qualitative_evaluations=summary,
            )
        )
        observer = sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name="cxrtl", manufacturer_name="cxrtl", model_name=_lo(self.model.name)
            ),
        )
        report = sr.MeasurementReport(
            observation_context=sr.ObservationContext(observer_device_context=observer),
            procedure_reported=codes.SCT.PlainRadiography,
            imaging_measurements=groups,
            referenced_images=[source] if _has_library_descriptors(source) else None,
        )
        root = report[0]
        root.ContentSequence.append(
            sr.TextContentItem(name=codes.DCM.Comment, value=DISCLAIMER, relationship_type="CONTAINS")
        )
        series, number = self._series_uid(source.StudyInstanceUID, "SR")
        return sr.Comprehensive3DSR(
            evidence=[source],
            content=root,
            series_instance_uid=series,
            series_number=SERIES["SR"][0],
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer="cxrtl",
            is_complete=True,
            series_description=SERIES["SR"][1],
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=SCHEME, name="cxrtl model classes and result items", version=self.model.version
                )
            ],
        )

    # --------------------------------------------------------------------------------- SEG
    def segmentation(self, source, mask: np.ndarray):
        """A binary SEG of ``mask`` (uint8 0/255 or bool, on the source's pixel grid)."""
        hd = require_highdicom()
        from pydicom.sr.codedict import codes

        mask = np.asarray(mask)
        rows, cols = int(source.Rows), int(source.Columns)
        if mask.shape != (rows, cols):  # a mask predicted at another size: nearest back onto the grid
            from PIL import Image

            mask = np.asarray(
                Image.fromarray((mask > 127).astype(np.uint8) * 255).resize(
                    (cols, rows), Image.Resampling.NEAREST
                )
            )
        binary = mask > 127 if mask.dtype != bool else mask
        algo = hd.AlgorithmIdentificationSequence(
            name="cxrtl",
            family=codes.DCM.ArtificialIntelligence,
            version=self.model.version,
            source=_lo(self.model.segmenter or self.model.name),
            parameters={"model": _lo(self.model.name), "checkpoint sha256": self.model.sha256},
        )
        segment = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Lung",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type="AUTOMATIC",
            algorithm_identification=algo,
        )
        series, number = self._series_uid(source.StudyInstanceUID, "SEG")
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=binary,
            segmentation_type="BINARY",
            segment_descriptions=[segment],
            series_instance_uid=series,
            series_number=SERIES["SEG"][0],
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer="cxrtl",
            manufacturer_model_name=_lo(self.model.name),
            software_versions=self.model.version,
            device_serial_number=self.model.sha256[:64],
            content_description=DISCLAIMER,
            content_label="LUNG",
            series_description=SERIES["SEG"][1],
            omit_empty_frames=False,
        )
        seg.PatientOrientation = orientation(source)  # type 2C without a frame of reference: as the source
        return seg

    # --------------------------------------------------------------------------------- SC
    def secondary_capture(self, source, cam_png: str | os.PathLike):
        """A Secondary Capture of a Grad-CAM overlay PNG, the disclaimer burned in below the image."""
        hd = require_highdicom()
        from PIL import Image

        with Image.open(cam_png) as im:
            rgb = np.asarray(im.convert("RGB"))
        pixels = burn_disclaimer(rgb)
        series, number = self._series_uid(source.StudyInstanceUID, "SC")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series,
            series_number=SERIES["SC"][0],
            sop_instance_uid=hd.UID(),
            instance_number=number,
            manufacturer="cxrtl",
            patient_orientation=("L", "F"),  # replaced below by the source's own (the overlay keeps its grid)
            series_description=SERIES["SC"][1],
            software_versions=self.model.version,
        )
        sc.PatientOrientation = orientation(source)
        if source.get("Laterality"):  # type 2C, for paired body parts: as the source says
            sc.Laterality = source.Laterality
        elif source.get("BodyPartExamined"):  # an unpaired part (the chest) needs none
            sc.BodyPartExamined = source.BodyPartExamined
        else:
            sc.Laterality = ""  # unknown
        sc.BurnedInAnnotation = "YES"
        sc.ImageComments = (
            f"Grad-CAM overlay by cxrtl {self.model.version}, model {self.model.name}. {DISCLAIMER}"
        )
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.DerivationDescription = _lo("Grad-CAM overlay on the source image (cxrtl)")
        ref = reference(source)
        sc.SourceImageSequence = ref.ReferencedInstanceSequence  # SOP Class and Instance UIDs
        sc.ReferencedSeriesSequence = [ref]  # Series and SOP Instance UIDs
        return sc


def _has_library_descriptors(source) -> bool:
    """highdicom's image library entry of a radiograph needs its orientation and imager pixel spacing."""
    modality = source.get("Modality", "")
    if modality not in ("CR", "DX", "MG", "RF", "XA", "IO", "PX"):
        return True
    orientation = source.get("PatientOrientation")
    return bool(orientation) and len(orientation) == 2 and source.get("ImagerPixelSpacing") is not None


def _ood_flag(row) -> bool | None:
    """The out-of-distribution flag of a row, where the model carries an OOD detector (``row.ood``)."""
    ood = getattr(row, "ood", None)
    if ood is None:
        return None
    if isinstance(ood, dict):
        flag = ood.get("flag")
        return None if flag is None else bool(flag)
    return bool(ood)


def burn_disclaimer(rgb: np.ndarray, text: str = DISCLAIMER) -> np.ndarray:
    """``rgb`` with a black band below it holding ``text`` in white (wider than the image if it must be)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    size = max(10, min(64, w // 40))
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size // 3)
    band = (bottom - top) + 2 * pad
    width = max(w, (right - left) + 2 * pad)
    canvas = Image.new("RGB", (width, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb, mode="RGB"), (0, 0))
    ImageDraw.Draw(canvas).text((pad - left, h + pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)

"""DICOMweb: pull a study's images from a PACS (QIDO-RS, WADO-RS) and push result objects back (STOW-RS).

A DICOMweb server is named as ``dicomweb+http://HOST:PORT/PATH`` (or ``dicomweb+https://``), PATH being the
service root (Orthanc: ``/dicom-web``). :class:`DicomWeb` wraps dicomweb-client (the optional ``pacs`` extra)
and turns every failure into one line: an unreachable server, an HTTP error (with the token hint for 401/403),
an answer that is not DICOMweb, an unknown study or series, a refused or partly failed STOW.
:func:`skip_reason` says, from an instance's header, why it is not an image the model can take.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import CxrtlError

log = logging.getLogger(__name__)

PREFIXES = ("dicomweb+http://", "dicomweb+https://")
TOKEN_ENV = "CXRTL_DICOMWEB_TOKEN"
EXTRA = "pip install 'cxrtl[pacs]'"
TIMEOUT = 30.0

# SOP classes of projection radiographs the model can take (CR, DX for presentation, secondary captures)
RADIOGRAPHS = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.7.2": "SC",
    "1.2.840.10008.5.1.4.1.1.7.3": "SC",
    "1.2.840.10008.5.1.4.1.1.7.4": "SC",
}
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "LUNGS", "TORSO"}


def is_dicomweb(value: str | os.PathLike) -> bool:
    """True for ``dicomweb+http://...`` and ``dicomweb+https://...``."""
    return isinstance(value, str) and value.lower().startswith(PREFIXES)


def service_url(value: str) -> str:
    """``dicomweb+http://HOST:PORT/PATH`` -> ``http://HOST:PORT/PATH`` (no trailing slash), checked."""
    url = value[len("dicomweb+") :].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CxrtlError(
            f"{value} is not a DICOMweb address; write dicomweb+http://HOST:PORT/PATH (Orthanc: "
            "dicomweb+http://HOST:8042/dicom-web)"
        )
    try:
        parts.port  # noqa: B018  (raises on a port that is no number)
    except ValueError:
        raise CxrtlError(f"{value} has no valid port; write dicomweb+http://HOST:PORT/PATH") from None
    return url


def _name(uid: Any) -> str:
    from pydicom.uid import UID

    name = UID(str(uid)).name if uid else "no SOP class"
    return name if name != str(uid) else f"SOP class {uid}"


def skip_reason(ds) -> str | None:
    """Why an instance is not an image the model can take, judged from its header; None when it is one."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return f"not an image ({_name(sop_class)})"
    if str(ds.get("Manufacturer", "")) == "cxrtl":
        return f"a cxrtl result ({_name(sop_class)}, series {ds.get('SeriesNumber', '?')})"
    if sop_class == DX_FOR_PROCESSING:
        return "a DX image 'for processing' (raw detector data); the model takes images 'for presentation'"
    if sop_class not in RADIOGRAPHS:
        return f"a {_name(sop_class)} object, not a projection radiograph"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return f"a lateral view (ViewPosition {view}); the model takes frontal (PA/AP) radiographs"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST_PARTS:
        return f"body part {part}, not the chest"
    return None


class DicomWeb:
    """One DICOMweb service: QIDO-RS search, WADO-RS retrieve, STOW-RS store, each failure one line."""

    def __init__(self, address: str, token: str | None = None, timeout: float = TIMEOUT):
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise CxrtlError(f"DICOMweb needs dicomweb-client; install it with `{EXTRA}`") from None
        self.address = address
        self.url = service_url(address)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = DICOMwebClient(self.url, headers=headers, timeout=timeout)
        # a busy server (429/503) gets two more tries, a short wait apart; everything else fails at once
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    # -------------------------------------------------------------------------------------- errors
    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            raise CxrtlError(self._http_problem(what, exc.response)) from None
        except requests.exceptions.Timeout:
            raise CxrtlError(
                f"the DICOMweb server at {self.url} did not answer the {what} within {self.timeout:g} s; "
                "check that it is running and not overloaded"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            raise CxrtlError(
                f"cannot reach the DICOMweb server at {self.url} ({_reason(exc)}); check the address and "
                "that the server is running"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise CxrtlError(f"the {what} to {self.url} failed ({_reason(exc)}); check the address") from None
        except (ValueError, KeyError, TypeError) as exc:  # HTML, wrong JSON, a multipart that is no DICOM
            raise CxrtlError(
                f"{self.url} did not answer the {what} as a DICOMweb server ({type(exc).__name__}: "
                f"{str(exc)[:120]}); check that the address is the DICOMweb root (Orthanc: .../dicom-web)"
            ) from None

    def _http_problem(self, what: str, response) -> str:
        status = getattr(response, "status_code", "?")
        reason = getattr(response, "reason", "") or ""
        head = f"the DICOMweb server at {self.url} answered the {what} with HTTP {status} {reason}".rstrip()
        if status in (401, 403):
            return f"{head}; give a valid bearer token with --token or {TOKEN_ENV}, or ask for access"
        if status == 404:
            return f"{head}; check that the address is the DICOMweb root (Orthanc: .../dicom-web)"
        return f"{head}; check the server's log"

    # -------------------------------------------------------------------------------------- reading
    def retrieve(self, study: str, series: str | None = None) -> list:
        """The instances of a study (or of one of its series) as pydicom datasets, as the server stores them.

        Raises:
            CxrtlError: the server cannot be reached or refuses, or has no such study or series.
        """
        found = self._call(
            "QIDO-RS study search",
            self.client.search_for_studies,
            search_filters={"StudyInstanceUID": study},
        )
        if not found:
            raise CxrtlError(
                f"no study {study} on {self.url}; check --study (the StudyInstanceUID, as a QIDO-RS "
                "search of /studies lists it)"
            )
        media = (("application/dicom", "*"),)  # as stored: no transcoding on the server
        if series is None:
            return list(self._call("WADO-RS retrieve", self.client.retrieve_study, study, media_types=media))
        listed = self._call(
            "QIDO-RS series search",
            self.client.search_for_series,
            study,
            search_filters={"SeriesInstanceUID": series},
        )
        if not listed:
            raise CxrtlError(f"study {study} on {self.url} has no series {series}; check --series")
        return list(
            self._call("WADO-RS retrieve", self.client.retrieve_series, study, series, media_types=media)
        )

    def search_series(self, study: str) -> list[dict[str, Any]]:
        """QIDO-RS: the series of a study, as DICOM JSON."""
        return list(self._call("QIDO-RS series search", self.client.search_for_series, study))

    # -------------------------------------------------------------------------------------- writing
    def store(self, datasets: Sequence, study: str | None = None) -> int:
        """STOW-RS the datasets (into ``study`` when given); returns how many the server stored.

        Raises:
            CxrtlError: the server refused the request, or reported instances it failed to store.
        """
        if not datasets:
            return 0
        answer = self._call("STOW-RS store", self.client.store_instances, list(datasets), study)
        failed = list(answer.get("FailedSOPSequence", []) or []) if answer is not None else []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise CxrtlError(
                f"the DICOMweb server at {self.url} failed to store {len(failed)} of {len(datasets)} result "
                f"object(s) (failure reason {', '.join(reasons)}); check the server's log"
            )
        return len(datasets)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, shortened: 'Connection refused', 'Name or service not known'."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker
    if "Failed to resolve" in text or "nodename nor servname" in text or "Temporary failure" in text:
        return "host name not found"
    return text.splitlines()[0][:160] if text else type(exc).__name__


def token_from(arg: str | None) -> str | None:
    """``--token``, else ``$CXRTL_DICOMWEB_TOKEN``, else None."""
    return arg or os.environ.get(TOKEN_ENV) or None

"""A DICOM node (DIMSE): receive images by C-STORE, predict each study once it has arrived, forward the results.

:class:`Listener` is a pynetdicom storage SCP (the optional ``pacs`` extra with pynetdicom). Each received
instance is written under a working folder, by study. A study is complete when the associations that
delivered it have ended and it has received nothing for ``settle`` seconds. Then one worker predicts on its
frontal chest radiographs (the others are skipped with the reason :func:`cxrtl.inference.dicomweb.skip_reason`
gives), builds the SR (and SEG with a segmenter) of each, and sends them by C-STORE to the forward
destination, and the study's files are deleted, or moved under ``keep`` when given. The work is bounded: one
study at a time, at most ``max_queue`` studies waiting or arriving (more are refused with status 0xA700, out
of resources, so the sender retries later).
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CxrtlError

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
EXTRA = "pip install 'cxrtl[pacs]'"


@dataclass(frozen=True)
class Destination:
    """``AE@HOST:PORT``: where the results go."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae and host and port.isdigit() and 0 < int(port) < 65536 and len(ae) <= 16):
            raise CxrtlError(f"--forward {text!r} is not AE@HOST:PORT (an AE title of up to 16 characters)")
        return cls(ae, host, int(port))


def _pynetdicom():
    try:
        import pynetdicom
    except ImportError:
        raise CxrtlError(f"cxrtl listen needs pynetdicom; install it with `{EXTRA}`") from None
    return pynetdicom


class Listener:
    """A storage SCP that predicts each complete study and forwards its result objects."""

    def __init__(
        self,
        predictor,
        writer,
        forward: Destination,
        ae_title: str = "CXRTL",
        keep: str | Path | None = None,
        settle: float = 5.0,
        max_queue: int = 4,
    ):
        _pynetdicom()
        self.predictor, self.writer, self.forward = predictor, writer, forward
        self.ae_title = ae_title
        self.keep = Path(keep) if keep else None
        self.settle, self.max_queue = float(settle), int(max_queue)
        self._work = Path(tempfile.mkdtemp(prefix="cxrtl-listen-"))
        self._lock = threading.Lock()
        self._arriving: dict[str, float] = {}  # study -> when its last instance arrived
        self._open: dict[int, set[str]] = {}  # association -> the studies it is delivering
        self._queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self.done: list[dict[str, Any]] = []  # one summary per processed study

    # ------------------------------------------------------------------------------ receiving
    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        study = str(ds.get("StudyInstanceUID", "") or "")
        if not study:
            return 0xC000  # cannot understand: without a study there is nothing to join
        with self._lock:
            if study not in self._arriving and len(self._arriving) + self._queue.qsize() >= self.max_queue:
                log.warning(
                    "refused an instance of study %s: %d studies already waiting", study, self.max_queue
                )
                return OUT_OF_RESOURCES
            folder = self._work / study
            folder.mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            self._arriving[study] = time.monotonic()
            self._open.setdefault(id(event.assoc), set()).add(study)
        return 0x0000

    def _on_end(self, event) -> None:
        """An association ended: its studies may be complete once they have been quiet for ``settle``."""
        with self._lock:
            for study in self._open.pop(id(event.assoc), set()):
                if study in self._arriving:
                    self._arriving[study] = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                delivering = set().union(*self._open.values()) if self._open else set()
                ready = [
                    s for s, t in self._arriving.items() if now - t >= self.settle and s not in delivering
                ]
                for study in ready:
                    del self._arriving[study]
                    self._queue.put(study)

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                study = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.done.append(self.process(study))
            except Exception as exc:  # noqa: BLE001  (one bad study must not stop the node)
                log.error("study %s: %s", study, exc)
                self.done.append({"study": study, "error": str(exc)})
            finally:
                self._finish(study)

    # ------------------------------------------------------------------------------ one study
    def process(self, study: str) -> dict[str, Any]:
        """Predict on a received study, build its results and send them; a summary of what happened."""
        import pydicom

        from .dicom_source import MaskKeeper, read_source
        from .dicomweb import skip_reason

        files = sorted((self._work / study).glob("*.dcm"))
        images, skipped = [], []
        for f in files:
            reason = skip_reason(pydicom.dcmread(f, defer_size=4096))  # pixels located, not read
            if reason is None:
                images.append(f)
            else:
                skipped.append(reason)
                log.info("study %s: skipped %s: %s", study, f.stem, reason)
        keeper = MaskKeeper() if self.predictor.segmenter is not None else None
        self.predictor.mask_hook = keeper
        try:
            rows = self.predictor.predict_files(images)
            objects = []
            for r in rows:
                if r.error is None:
                    objects += [
                        ds
                        for _, ds in self.writer.objects(
                            read_source(r.path), r, keeper and keeper.get(r.path)
                        )
                    ]
        finally:
            if keeper is not None:
                keeper.close()
        sent = self._send(objects)
        log.info(
            "study %s: %d image(s) predicted, %d skipped, %d result object(s) sent",
            study,
            len(rows),
            len(skipped),
            sent,
        )
        return {"study": study, "rows": [r.to_dict() for r in rows], "skipped": skipped, "sent": sent}

    def _send(self, objects: list) -> int:
        pynetdicom = _pynetdicom()
        if not objects:
            return 0
        ae = pynetdicom.AE(ae_title=self.ae_title)
        for uid in sorted({str(ds.SOPClassUID) for ds in objects}):
            ae.add_requested_context(uid)
        f = self.forward
        assoc = ae.associate(f.host, f.port, ae_title=f.ae_title)
        if not assoc.is_established:
            raise CxrtlError(f"cannot open an association with {f.ae_title}@{f.host}:{f.port}")
        sent = 0
        try:
            for ds in objects:
                status = assoc.send_c_store(ds)
                if status and int(status.Status) == 0:
                    sent += 1
                else:
                    log.error("%s refused %s", f.ae_title, ds.SOPInstanceUID)
        finally:
            assoc.release()
        return sent

    def _finish(self, study: str) -> None:
        folder = self._work / study
        if self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(self.keep / study))
        else:
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------------------ running
    def start(self, host: str = "127.0.0.1", port: int = 11112) -> Listener:
        """Start listening (in the background); :meth:`stop` ends it."""
        pynetdicom = _pynetdicom()
        from pynetdicom import AllStoragePresentationContexts, evt
        from pynetdicom.presentation import build_context

        ae = pynetdicom.AE(ae_title=self.ae_title)
        ae.supported_contexts = [
            build_context(str(c.abstract_syntax), ALL_SYNTAXES) for c in AllStoragePresentationContexts
        ]
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        try:
            self._server = ae.start_server(
                (host, port),
                block=False,
                evt_handlers=[
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_end),
                    (evt.EVT_ABORTED, self._on_end),
                ],
            )
        except OSError as exc:
            raise CxrtlError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port"
            ) from None
        for target in (self._watch, self._worker):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def idle(self) -> bool:
        with self._lock:
            return not self._arriving and self._queue.empty()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout=30)
        shutil.rmtree(self._work, ignore_errors=True)


ALL_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

"""A real PACS for tests and benchmarks: Debian's Orthanc with its DICOMweb plugin, on free loopback ports.

``Orthanc(folder).start()`` writes a temporary configuration (storage and index in ``folder``, remote access
off, the DICOMweb plugin at ``/dicom-web``), starts ``Orthanc CONFIG.json``, waits (bounded) until
``/system`` answers, and :meth:`Orthanc.stop` ends it. An optional Lua ``IncomingHttpRequestFilter`` makes
it refuse requests, as a real server with access rules would.
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PACKAGES = "Debian's orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb)"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


def binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing() -> str | None:
    """Why no Orthanc can be started here (naming the packages), or None."""
    if binary() is None:
        return f"needs {PACKAGES}: no Orthanc executable"
    if plugin() is None:
        return f"needs {PACKAGES}: no DICOMweb plugin"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    def __init__(
        self,
        folder: Path,
        lua: str | None = None,
        headers: dict[str, str] | None = None,
        modalities: dict[str, list] | None = None,
    ):
        """``modalities``: DICOM peers (``{"name": [AE, host, port]}``); with them the DICOM server is on."""
        self.folder = Path(folder)
        self.modalities = modalities
        self.lua = lua
        self.headers = dict(headers or {})  # what the readiness check and uploads send (a filter's token)
        self.port = free_port()
        self.dicom_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        db = self.folder / "db"
        db.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "cxrtl-test",
            "HttpPort": self.port,
            "DicomPort": self.dicom_port,
            "DicomServerEnabled": self.modalities is not None,
            "DicomAet": "ORTHANC",
            "DicomModalities": self.modalities or {},
            "DicomCheckCalledAeTitle": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "StorageCompression": False,
            "Plugins": [plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpTimeout": 30,
        }
        if self.lua is not None:
            script = self.folder / "filter.lua"
            script.write_text(self.lua)
            cfg["LuaScripts"] = [str(script)]
        return cfg

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen([binary(), str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        tail = (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"Orthanc did not start within {timeout:g} s:\n{tail}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ REST
    def _request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None):
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(self.headers))
        if content_type:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def _request_raw(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, headers=dict(self.headers))
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def get(self, path: str):
        return self._request("GET", path)

    def post(self, path: str, body) -> object:
        return self._request("POST", path, json.dumps(body).encode(), "application/json")

    def upload(self, path: str | Path) -> dict:
        """Store one DICOM file through Orthanc's own REST API (POST /instances)."""
        return self._request("POST", "/instances", Path(path).read_bytes(), "application/dicom")

"""`cxrtl serve`: every endpoint and error of the API, parity with `cxrtl predict`, safety and load."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'cxrtl[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install 'cxrtl[serve]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")
from fastapi.testclient import TestClient
from PIL import Image

from cxrtl.cli import main
from cxrtl.data.preprocess import Preprocess
from cxrtl.errors import CxrtlError
from cxrtl.fsutil import write_json
from cxrtl.inference.predict import Predictor
from cxrtl.serve.app import create_app
from cxrtl.serve.server import load_predictor, resolve_token
from helpers import bomb_png
from test_predict import CLASSES, make_run, radiograph, save_png

SRC = str(Path(__file__).resolve().parents[1] / "src")
LOCAL = "http://localhost"  # the server accepts only its bound host and localhost names in Host


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A calibrated 64 px run with a summary.json, its held-out images, and its Predictor."""
    root = tmp_path_factory.mktemp("serve")
    run = make_run(root / "run", Preprocess(input="raw", channels=3, image_size=64), seed=5, temperature=1.3)
    write_json(run / "summary.json", {"best_epoch": 7, "best_val_acc": 0.875, "epochs_completed": 9})
    files = [
        save_png(root / "img" / f"held{i}.png", radiograph(70 + 6 * i, 88, seed=20 + i)) for i in range(3)
    ]
    return run, files, Predictor.from_checkpoint(run)


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served[2], max_files=4, max_upload_mb=0.5), base_url=LOCAL)


def upload(*items):
    """(name, bytes) pairs -> the ``files=`` argument of an httpx/TestClient post."""
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def test_healthz_model_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["backbone"] == "test_resnet" and info["backend"] == "torch"
    assert info["preprocessing"] == {"input": "raw", "channels": 3, "size": 64, "resize": 73}
    assert info["training"]["best_epoch"] == 7 and info["training"]["best_val_acc"] == 0.875
    assert info["calibration"]["temperature"] == 1.3 and info["calibration"]["conformal_threshold"] is None
    assert info["cxrtl_version"] == __import__("cxrtl").__version__
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN: off
    page = client.get("/")
    assert page.status_code == 200 and "not a medical device" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("HTTP ", "")  # no CDN: works offline


def test_api_equals_cxrtl_predict_json(client, served, capsys):
    run, files, _ = served
    assert main(["predict", str(run), *map(str, files), "--format", "json", "--no-progress"]) == 0
    want = json.loads(capsys.readouterr().out)
    got = client.post("/v1/predict", files=upload(*[(f.name, f.read_bytes()) for f in files]))
    assert got.status_code == 200
    rows = got.json()
    assert [r["path"] for r in rows] == [f.name for f in files]
    for r, w in zip(rows, want):
        assert r["label"] == w["label"] and set(r) == set(
            w
        )  # the same row as `cxrtl predict`, field for field
        np.testing.assert_allclose(
            [r["probabilities"][c] for c in CLASSES], [w["probabilities"][c] for c in CLASSES], atol=1e-6
        )


def test_bad_files_are_error_rows_and_the_rest_is_answered(client, served, tmp_path):
    good = served[1][0].read_bytes()
    truncated = good[: len(good) // 2]
    bomb = bomb_png(tmp_path / "bomb.png").read_bytes()
    r = client.post(
        "/v1/predict",
        files=upload(
            ("notes.txt", b"not an image"), ("good.png", good), ("cut.png", truncated), ("bomb.png", bomb)
        ),
    )
    assert r.status_code == 200
    rows = {row["path"]: row for row in r.json()}
    assert rows["good.png"]["label"] in CLASSES and "error" not in rows["good.png"]
    assert "not an image" in rows["notes.txt"]["error"] and "notes.txt" in rows["notes.txt"]["error"]
    assert "truncated" in rows["cut.png"]["error"]
    assert "decompression bomb" in rows["bomb.png"]["error"]
    assert all("/proc/" not in str(row.get("error")) for row in rows.values())  # names the upload, not the fd
    assert client.get("/healthz").status_code == 200  # still serving


def test_dicom_upload_predicts_like_its_png(client, tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    img = radiograph(72, 80, seed=9)
    dcm = Path(write_dicom(tmp_path / "x.dcm", img))
    png = save_png(tmp_path / "x.png", img)
    rows = client.post(
        "/v1/predict?image=true",
        files=upload(
            ("x.dcm", dcm.read_bytes()), ("x.png", png.read_bytes()), ("broken.dcm", dcm.read_bytes()[:300])
        ),
    ).json()
    assert rows[0]["probabilities"] == rows[1]["probabilities"]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(rows[0]["image_png"]))))
    np.testing.assert_array_equal(shown, img)  # the page can show the DICOM: the server renders it
    assert rows[2]["error"] and "broken.dcm" in rows[2]["error"]


def test_cam_overlay_is_drawn_on_the_image_as_sent(client, served):
    data = served[1][1].read_bytes()
    row = client.post("/v1/predict?cam=true&image=true", files=upload(("a.png", data))).json()[0]
    overlay = Image.open(io.BytesIO(base64.b64decode(row["cam_png"])))
    shown = Image.open(io.BytesIO(base64.b64decode(row["image_png"])))
    # at the upload's own size (as `predict --cam` writes overlays), not the 64 px model input
    assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == shown.size
    assert overlay.size == Image.open(io.BytesIO(data)).size
    assert row["cam_class"] == row["label"]
    assert "cam_png" not in client.post("/v1/predict", files=upload(("a.png", data))).json()[0]


@pytest.mark.parametrize(
    "kwargs, status, phrase",
    [
        ({"files": [("other", ("a.png", b"x"))]}, 400, "no files"),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "multipart/form-data"),
        ({"files": upload(*[(f"{i}.png", b"x") for i in range(5)])}, 413, "limit 4"),
        ({"files": upload(("big.png", b"\0" * (600 * 1024)))}, 413, "0.5 MB limit"),
        (
            {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            400,
            "",
        ),
    ],
    ids=["no-files", "content-type", "too-many-files", "too-large", "malformed"],
)
def test_request_errors_are_json_with_status(client, kwargs, status, phrase):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and phrase in body["error"] and "; " in body["error"]
    assert "Traceback" not in r.text
    assert client.get("/healthz").status_code == 200


def test_odd_requests_never_500(client):
    for method, url in [("get", "/nope"), ("put", "/v1/predict"), ("post", "/v1/predict?cam=maybe")]:
        r = getattr(client, method)(url)
        assert 400 <= r.status_code < 500 and "error" in r.json()


def test_token_required_when_set(served):
    c = TestClient(create_app(served[2], token="s3cret"), base_url=LOCAL)
    assert c.get("/v1/model").status_code == 401
    assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_non_loopback_host_needs_a_token(monkeypatch, caplog, served, capsys):
    monkeypatch.delenv("CXRTL_SERVE_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", False) is None and resolve_token("localhost", False) is None
    with pytest.raises(CxrtlError, match="CXRTL_SERVE_TOKEN"):
        resolve_token("0.0.0.0", False)
    with caplog.at_level(logging.WARNING):
        assert resolve_token("0.0.0.0", True) is None
    assert "WITHOUT a token" in caplog.text
    monkeypatch.setenv("CXRTL_SERVE_TOKEN", "a")
    assert resolve_token("127.0.0.1", False) == "a"  # loopback: any token
    with pytest.raises(CxrtlError, match=r"at least 16.*secrets\.token_urlsafe\(32\)"):
        resolve_token("0.0.0.0", False)
    monkeypatch.setenv("CXRTL_SERVE_TOKEN", "0123456789abcdef")
    assert resolve_token("0.0.0.0", False) == "0123456789abcdef"
    monkeypatch.setenv("CXRTL_SERVE_TOKEN", "short")
    assert main(["serve", str(served[0]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrtl: error: CXRTL_SERVE_TOKEN has 5 characters") and len(err.splitlines()) == 1
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in err
    monkeypatch.delenv("CXRTL_SERVE_TOKEN")
    assert main(["serve", str(served[0]), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrtl: error: ") and len(err.strip().splitlines()) == 1


def test_cli_bad_model_and_backend_are_one_line_errors(served, tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    for argv in (
        ["serve", str(tmp_path / "missing")],
        ["serve", str(onnx), "--backend", "torch"],
        ["serve", str(served[0]), "--backend", "onnx"],
        ["serve", str(served[0]), "--workers", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cxrtl: error: ") and len(err.strip().splitlines()) == 1, err


def test_masked_model_is_refused_at_start(tmp_path):
    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=1, image_size=32))
    with pytest.raises(CxrtlError, match="lung-masked"):
        create_app(Predictor.from_checkpoint(run))


def test_one_log_line_per_request_without_names(client, served, caplog):
    data = served[1][0].read_bytes()
    with caplog.at_level(logging.INFO, logger="cxrtl.serve"):
        client.post("/v1/predict", files=upload(("patient-Jane-Doe.png", data), ("b.png", data)))
        client.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "cxrtl.serve"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /v1/predict 200 files=2 ms=") and lines[1].startswith("GET /healthz 200")
    assert "Jane" not in caplog.text


# ---------------------------------------------------------------------------------------- a live server


@contextmanager
def live_server(app):
    """Uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL and always stops it."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


class SlowPredictor:
    """A Predictor whose model call waits for ``gate``: requests pile up while it is closed."""

    def __init__(self, predictor):
        self._p, self.gate = predictor, threading.Event()

    def __getattr__(self, name):
        return getattr(self._p, name)

    def predict_prepared(self, *args, **kwargs):
        assert self.gate.wait(30)
        return self._p.predict_prepared(*args, **kwargs)

    def predict_prepared_ood(self, *args, **kwargs):  # what the server calls: probabilities and OOD scores
        assert self.gate.wait(30)
        return self._p.predict_prepared_ood(*args, **kwargs)


def test_backpressure_503_and_healthz_while_busy(served):
    slow = SlowPredictor(served[2])
    data = served[1][0].read_bytes()
    with live_server(create_app(slow, workers=1, max_queue=2)) as url, ThreadPoolExecutor(2) as pool:
        post = lambda: httpx.post(f"{url}/v1/predict", files=upload(("a.png", data)), timeout=30)  # noqa: E731
        first = [pool.submit(post) for _ in range(2)]
        time.sleep(0.5)  # both admitted and blocked in the model
        busy = httpx.post(f"{url}/v1/predict", files=upload(("a.png", data)), timeout=10)
        assert (
            busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        )
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        slow.gate.set()
        assert [f.result().status_code for f in first] == [200, 200]


def test_upload_limit_is_checked_while_reading(served):
    """A chunked body with no Content-Length is refused once it passes the limit, not after it ends."""
    with live_server(create_app(served[2], max_upload_mb=1)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            chunk = b"\0" * 256 * 1024
            sent, answer = 0, b""
            s.settimeout(0.05)
            for _ in range(64):  # 16 MB would follow; the server must answer after about 1 MB
                try:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    answer += s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if answer:
                    break
            s.settimeout(5)
            try:
                while b"\r\n\r\n" not in answer or b"}" not in answer:
                    more = s.recv(4096)
                    if not more:
                        break
                    answer += more
            except OSError:
                pass
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"1 MB limit" in answer and sent < 8 * 2**20
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_32_concurrent_requests_and_healthz_during_them(served):
    files = served[1]
    limits = httpx.Limits(max_connections=40)
    with (
        live_server(create_app(served[2], workers=2)) as url,
        httpx.Client(timeout=60, limits=limits) as http,
    ):

        def post(i):
            f = files[i % len(files)]
            r = http.post(f"{url}/v1/predict", files=upload((f.name, f.read_bytes())))
            return r.status_code, r.json(), time.monotonic()

        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(post, i) for i in range(32)]
            time.sleep(0.05)
            health = http.get(f"{url}/healthz")
            health_at = time.monotonic()
            results = [f.result() for f in futures]
    assert health.json() == {"status": "ok"}
    assert all(status == 200 and rows[0]["label"] in CLASSES for status, rows, _ in results)
    assert health_at < max(t for *_, t in results)  # answered while predictions were still running


# ---------------------------------------------------------------------------------------- ONNX, no torch


@pytest.fixture(scope="module")
def onnx_model(served, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from cxrtl.inference.export import export_onnx

    return export_onnx(served[0], tmp_path_factory.mktemp("onnx") / "model.onnx", exporter="torchscript")


def test_onnx_backend_matches_and_has_no_cam(served, onnx_model):
    predictor = load_predictor(onnx_model, backend="onnx")
    c = TestClient(create_app(predictor), base_url=LOCAL)
    data = served[1][0].read_bytes()
    row = c.post("/v1/predict", files=upload(("a.png", data))).json()[0]
    want = served[2].predict_files([served[1][0]])[0].probabilities
    np.testing.assert_allclose(
        [row["probabilities"][k] for k in CLASSES], [want[k] for k in CLASSES], atol=1e-4
    )
    info = c.get("/v1/model").json()
    assert info["backend"] == "onnx" and info["cam"] is False and info["calibration"]["temperature"] == 1.3
    r = c.post("/v1/predict?cam=true", files=upload(("a.png", data)))
    assert r.status_code == 400 and "ONNX" in r.json()["error"]


def test_cli_serve_onnx_prints_url_never_imports_torch_and_stops_on_ctrl_c(served, onnx_model):
    code = (
        "import sys\n"
        "from cxrtl.cli import main\n"
        f"rc = main(['serve', {str(onnx_model)!r}, '--port', '0'])\n"
        "print('TORCH', 'torch' in sys.modules, 'RC', rc, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        first = proc.stdout.readline()
        assert "http://127.0.0.1:" in first, first + proc.stderr.read() if proc.poll() is not None else first
        url = first.split(" at ")[1].split()[0].rstrip("/")
        data = served[1][0].read_bytes()
        rows = httpx.post(f"{url}/v1/predict", files=upload(("a.png", data)), timeout=30).json()
        assert rows[0]["label"] in CLASSES
        proc.send_signal(2)  # Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "TORCH False RC 0" in out, out + err
    assert "stopped" in out and "Traceback" not in err
    assert "POST /v1/predict 200 files=1 ms=" in err and "a.png" not in err

"""Issue 21 §2: `cxrtl serve` under slow and foreign clients, and the parts the review found sound ("Keep").

The socket tests run a real uvicorn on 127.0.0.1 (in this process, with the server's own protocol and
timeouts) and every loop is bounded; nothing leaves the machine.
"""

from __future__ import annotations

import ast
import base64
import io
import socket
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'cxrtl[serve]'")
httpx = pytest.importorskip("httpx", reason="needs httpx (the dev extra)")
from fastapi.testclient import TestClient
from PIL import Image

from cxrtl.data.preprocess import Preprocess
from cxrtl.inference.predict import Predictor
from cxrtl.serve import server as server_mod
from cxrtl.serve.app import SECURITY_HEADERS, create_app
from test_predict import CLASSES, make_run, radiograph, save_png
from test_serve import upload

LOCAL = "http://localhost"
SRC = Path(__file__).resolve().parents[2] / "src" / "cxrtl"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-serve")
    run = make_run(root / "run", Preprocess(input="raw", channels=1, image_size=64), seed=2)
    png = save_png(root / "ok.png", radiograph(60, 52, seed=4)).read_bytes()
    return run, png, Predictor.from_checkpoint(run)


@contextmanager
def uvicorn_server(app, keep_alive: float = server_mod.KEEP_ALIVE_S):
    """The app behind uvicorn as `cxrtl serve` configures it (header deadline, keep-alive, header size)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        http=server_mod.protocol_class(),
        timeout_keep_alive=keep_alive,
        h11_max_incomplete_event_size=server_mod.MAX_HEADER_BYTES,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def stalled_post(port: int, send_body: bool) -> socket.socket:
    """A POST that announces a 1 MB body and then stalls (after a few bytes of it, or before any)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        + (
            b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
            if send_body
            else b""
        )
    )
    return s


def read_answer(s: socket.socket, within: float) -> bytes:
    """What the server sends on ``s`` until it closes or ``within`` seconds pass."""
    s.settimeout(0.2)
    got, end = b"", time.monotonic() + within
    while time.monotonic() < end:
        try:
            more = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not more:
            break
        got += more
    return got


def test_64_stalled_connections_do_not_keep_a_normal_upload_from_an_answer(model):
    """Before: a request counted against --max-queue before its body, so 64 stalled sockets got every
    later upload a 503 for as long as they stalled."""
    _, png, predictor = model
    with uvicorn_server(create_app(predictor, max_queue=64)) as port, ExitStack() as stack:
        for i in range(64):  # half stalled inside the body, half right after the headers
            stack.callback(stalled_post(port, send_body=i % 2 == 0).close)
        time.sleep(0.3)
        start = time.monotonic()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=upload(("ok.png", png)), timeout=5)
        assert r.status_code == 200 and r.json()[0]["label"] in CLASSES
        assert time.monotonic() - start < 5
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_answered_408(model):
    with uvicorn_server(create_app(model[2], read_timeout=1)) as port:
        s = stalled_post(port, send_body=True)
        start = time.monotonic()
        answer = read_answer(s, within=5)
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'{"error":"the request body did not arrive within 1 s;' in answer
    assert 0.9 < time.monotonic() - start < 3


def test_idle_and_slow_header_connections_are_closed(model, monkeypatch):
    monkeypatch.setattr(server_mod, "HEADER_TIMEOUT_S", 0.5)
    with uvicorn_server(create_app(model[2]), keep_alive=1) as port:
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        dribble = socket.create_connection(("127.0.0.1", port), timeout=5)
        dribble.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        start = time.monotonic()
        assert read_answer(idle, within=3) == b"" and read_answer(dribble, within=3) == b""
        assert time.monotonic() - start < 2.5  # closed by the header deadline, not by the 3 s loop
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_answer(kept, within=4)  # the answer, then the close after the idle keep-alive
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
        for s in (idle, dribble, kept):
            s.close()


def test_foreign_host_and_origin_are_refused(model):
    c = TestClient(create_app(model[2], allow_origins=["https://lab.example"]), base_url=LOCAL)
    files = upload(("ok.png", model[1]))
    r = c.get("/healthz", headers={"Host": "evil.example"})  # DNS rebinding
    assert (
        r.status_code == 400 and "--allow-host" in r.json()["error"] and r.headers["X-Content-Type-Options"]
    )
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000"):
        assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
    r = c.post("/v1/predict", files=files, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "--allow-origin" in r.json()["error"]
    assert c.post("/v1/predict", files=files, headers={"Origin": "null"}).status_code == 403
    assert c.post("/v1/predict", files=files, headers={"Origin": "http://localhost"}).status_code == 200
    assert c.post("/v1/predict", files=files, headers={"Origin": "https://lab.example"}).status_code == 200
    assert c.post("/v1/predict", files=files).status_code == 200  # curl and scripts send no Origin
    bound = TestClient(create_app(model[2], hosts=["xray.lab.example"]), base_url="http://xray.lab.example")
    assert bound.get("/healthz").status_code == 200


def test_security_headers_and_nothing_loads_from_another_host(model):
    c = TestClient(create_app(model[2]), base_url=LOCAL)
    for path in ("/", "/healthz", "/static/app.js", "/nope"):
        r = c.get(path)
        for key, value in SECURITY_HEADERS.items():
            assert r.headers[key] == value, (path, key)
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert "/v1/predict" in c.get("/openapi.json").json()["paths"]
    for path in ("/", "/static/app.js", "/static/style.css", "/openapi.json"):
        text = c.get(path).text
        assert "http://" not in text and "https://" not in text, path  # nothing from another host
        assert "style=" not in text, path  # the CSP refuses inline styles


def test_the_pixel_budget_answers_error_rows_past_it(model):
    _, png, predictor = model
    pixels = 60 * 52
    c = TestClient(create_app(predictor, max_pixels_per_request=2 * pixels), base_url=LOCAL)
    rows = c.post("/v1/predict", files=upload(*[(f"{i}.png", png) for i in range(3)])).json()
    assert [r["label"] in CLASSES for r in rows[:2]] == [True, True]
    assert "pixel budget" in rows[2]["error"] and rows[2]["error"].startswith("2.png: ")
    assert "--max-pixels-per-request" in rows[2]["error"] and rows[2]["label"] is None


def test_cam_requests_decode_once_and_run_by_the_batch_size(model, monkeypatch):
    import cxrtl.evaluation.cam as cam_mod

    _, png, predictor = model
    loads, cam_batches = [], []

    class Counting:
        def __getattr__(self, name):
            return getattr(predictor, name)

        def load(self, image):
            loads.append(image)
            return predictor.load(image)

    real = cam_mod.grad_cam

    def counted(model_, x, *args, **kwargs):
        cam_batches.append(len(x))
        return real(model_, x, *args, **kwargs)

    monkeypatch.setattr(cam_mod, "grad_cam", counted)
    c = TestClient(create_app(Counting(), batch_size=2), base_url=LOCAL)
    rows = c.post(
        "/v1/predict?cam=true&image=true", files=upload(*[(f"{i}.png", png) for i in range(5)])
    ).json()
    assert all(r.get("cam_png") and r.get("image_png") for r in rows), rows[0].keys() | {
        rows[0].get("cam_error")
    }
    assert len(loads) == 5 and cam_batches == [2, 2, 1]  # once per file; Grad-CAM batch <= batch size
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(rows[0]["image_png"]))))
    assert shown.shape == (60, 52)


# ------------------------------------------------------------------------------------------------ Keep


def test_token_is_checked_before_the_body_is_read(model):
    """A client without the token never gets to send its body: 401 while 1 MB is still announced."""
    with uvicorn_server(create_app(model[2], token="t" * 32)) as port:
        s = stalled_post(port, send_body=False)
        start = time.monotonic()
        answer = read_answer(s, within=3)
        s.close()
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - start < 2.5


def test_static_paths_cannot_escape_and_a_500_names_only_the_exception_type(model):
    c = TestClient(create_app(model[2]), base_url=LOCAL)
    for path in (
        "/static/../app.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fapp.py",
        "/static//etc/passwd",
    ):
        r = c.get(path)
        assert r.status_code == 404 and "import" not in r.text, path

    class Broken:
        def __getattr__(self, name):
            return getattr(model[2], name)

        def predict_prepared(self, batch):
            raise RuntimeError("secret detail at /srv/models/x")

        predict_prepared_ood = predict_prepared  # what the server calls (probabilities and OOD scores)

    r = TestClient(create_app(Broken()), base_url=LOCAL).post(
        "/v1/predict", files=upload(("a.png", model[1]))
    )
    assert r.status_code == 500 and r.json() == {
        "error": "internal error (RuntimeError); the server keeps running"
    }


def test_the_page_inserts_no_html_from_data():
    js = (SRC / "serve" / "static" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink


def test_no_pickle_torch_load_yaml_load_or_eval_in_the_source():
    bad = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else []
                )
                bad += [
                    f"{path}: import {n}"
                    for n in names
                    if n and n.split(".")[0] in ("pickle", "dill", "marshal")
                ]
            if isinstance(node, ast.Call):
                f = node.func
                name = (
                    f.id
                    if isinstance(f, ast.Name)
                    else f"{getattr(f.value, 'id', '?')}.{f.attr}"
                    if isinstance(f, ast.Attribute)
                    else ""
                )
                if name in (
                    "eval",
                    "exec",
                    "torch.load",
                    "yaml.load",
                    "yaml.unsafe_load",
                    "pickle.load",
                    "pickle.loads",
                ):
                    bad.append(f"{path}:{node.lineno}: {name}")
    assert not bad, bad


def test_atomic_writes_replace_a_symlink_instead_of_following_it(tmp_path):
    from cxrtl.fsutil import write_text

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    write_text(link, "new")
    assert target.read_text() == "keep me" and not link.is_symlink() and link.read_text() == "new"

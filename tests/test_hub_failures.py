"""The Hub's failure paths against the real huggingface_hub client, never a stand-in for it.

`cxrtl push` and `hf://` downloads run as a user runs them (a subprocess of the CLI, with the client's own
HTTP stack) against: this machine's network (none here, so the real no-network condition), a host that
cannot resolve, a closed port, a proxy that refuses, a local server answering 401/403/404/500, and one that
never answers. Each must end in one line naming the cause, exit 2, in well under 20 s.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("onnxruntime")

from cxrtl.inference.bundle import make_bundle
from test_bundle import make_covid_run

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, covid_root):
    root = tmp_path_factory.mktemp("hubfail")
    make_bundle(
        make_covid_run(root / "run", covid_root), root / "bundle", exporter="torchscript", leakage_check=False
    )
    return root / "bundle"


def cxrtl(args: list[str], tmp_path: Path, **env: str) -> tuple[int, str, float]:
    """Run the CLI as a user would, online as far as huggingface_hub knows; (exit code, stderr, seconds)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    base = {k: v for k, v in base.items() if k.lower() not in ("https_proxy", "http_proxy", "all_proxy")}
    base.update(
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        HF_HOME=str(tmp_path / "hf-home"),  # no token from ~/.cache/huggingface
        HF_HUB_DISABLE_TELEMETRY="1",
        **env,
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cxrtl", *args], env=base, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stderr, time.monotonic() - start


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("cxrtl: error: "), err
    assert "Traceback" not in err
    return err


class Answer(http.server.BaseHTTPRequestHandler):
    status = 500

    def _answer(self):
        size = int(self.headers.get("Content-Length") or 0)
        if size:
            self.rfile.read(size)
        body = json.dumps({"error": f"answered {self.status} by the test"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_answering():
    """A local HTTP server (127.0.0.1, a free port) answering every request with one status."""
    servers = []

    def start(status: int) -> str:
        handler = type("Handler", (Answer,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_with_this_machines_network(bundle, tmp_path):
    """The default endpoint: offline here (no network at all), or 401 without a token where there is one."""
    rc, err, seconds = cxrtl(["push", str(bundle), "--repo", "alice/covid"], tmp_path)
    assert rc == 2 and seconds < 20
    assert one_line(err).startswith("cxrtl: error: cannot push to alice/covid: ")
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:  # the real no-network condition
        assert "cannot resolve the host of https://huggingface.co (no network, or a DNS failure)" in err


@pytest.mark.parametrize(
    "endpoint, proxy, cause",
    [
        (
            "http://hub.invalid",
            None,
            "cannot resolve the host of http://hub.invalid",
        ),  # RFC 6761: never resolves
        ("http://127.0.0.1:{port}", None, "cannot connect to http://127.0.0.1:{port} (connection refused)"),
        (None, "http://127.0.0.1:{port}", "through the proxy in HTTPS_PROXY (connection refused)"),
    ],
)
def test_push_cannot_reach_the_hub(bundle, tmp_path, endpoint, proxy, cause):
    port = free_closed_port()
    env = {"HF_TOKEN": "hf_test"}
    if endpoint:
        env["HF_ENDPOINT"] = endpoint.format(port=port)
    if proxy:
        env["HTTPS_PROXY"] = proxy.format(port=port)
    rc, err, seconds = cxrtl(["push", str(bundle), "--repo", "alice/covid"], tmp_path, **env)
    assert rc == 2 and seconds < 20
    assert cause.format(port=port) in one_line(err)


@pytest.mark.parametrize(
    "status, cause, fix",
    [
        (401, "401 Unauthorized", "`hf auth login` or set HF_TOKEN"),
        (403, "403 Forbidden", "a token with write access"),
        (404, "404 Not Found", "check OWNER/NAME"),
        (500, "the Hub answered 500 (a server error at http://127.0.0.1:", "try again later"),
    ],
)
def test_push_each_status_gets_its_line(bundle, tmp_path, hub_answering, status, cause, fix):
    endpoint = hub_answering(status)
    rc, err, seconds = cxrtl(
        ["push", str(bundle), "--repo", "alice/covid"], tmp_path, HF_ENDPOINT=endpoint, HF_TOKEN="hf_test"
    )
    assert rc == 2 and seconds < 20
    assert (
        cause in one_line(err) and fix in err and err.startswith("cxrtl: error: cannot push to alice/covid")
    )


@pytest.mark.parametrize(
    "status, cause", [(401, "401 Unauthorized"), (404, "404 Not Found"), (500, "answered 500")]
)
def test_download_each_status_gets_its_line(tmp_path, hub_answering, status, cause):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    rc, err, seconds = cxrtl(
        ["predict", "hf://alice/covid@v1", str(image)], tmp_path, HF_ENDPOINT=hub_answering(status)
    )
    assert rc == 2 and seconds < 20
    assert one_line(err).startswith("cxrtl: error: cannot fetch hf://alice/covid@v1")
    assert cause in err and "give a local bundle folder" in err


def test_download_from_a_hub_that_never_answers_times_out(tmp_path):
    """A server that accepts the connection and says nothing: the short timeout, then one line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing is ever read or sent
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        rc, err, seconds = cxrtl(
            ["predict", "hf://alice/covid", str(tmp_path / "x.png")],
            tmp_path,
            HF_ENDPOINT=endpoint,
            HF_HUB_ETAG_TIMEOUT="1",
            HF_HUB_DOWNLOAD_TIMEOUT="1",
        )
    assert rc == 2 and seconds < 20
    assert "did not answer in time" in one_line(err)

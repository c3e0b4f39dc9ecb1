"""The web page of `cxrtl serve` in a real headless Chromium: upload, results, errors, Grad-CAM toggle.

Uses Debian's ``chromium`` package driven by Playwright (``executable_path``; no ``playwright install``).
``CXRTL_UPDATE_SCREENSHOT=1`` also writes the screenshot to docs/serve.png for the README.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'cxrtl[serve]'")
pytest.importorskip("httpx", reason="needs httpx (the dev extra)")
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
if CHROMIUM is None:
    pytest.skip("needs Debian's chromium package (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")

import httpx

from cxrtl.data.preprocess import Preprocess
from cxrtl.fsutil import write_bytes, write_json
from cxrtl.inference.predict import Predictor
from cxrtl.serve.app import create_app
from test_predict import CLASSES, make_run, radiograph, save_png
from test_serve import live_server, upload

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.mark.slow
def test_page_uploads_shows_results_errors_and_cam(tmp_path, browser):
    run = make_run(
        tmp_path / "run", Preprocess(input="raw", channels=3, image_size=64), seed=2, temperature=1.2
    )
    write_json(run / "summary.json", {"best_epoch": 12, "best_val_acc": 0.9375, "epochs_completed": 30})
    good = save_png(tmp_path / "chest-01.png", radiograph(300, 340, seed=4))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with live_server(create_app(Predictor.from_checkpoint(run))) as url:
        want = httpx.post(f"{url}/v1/predict", files=upload((good.name, good.read_bytes()))).json()[0]
        page = browser.new_page(viewport={"width": 1000, "height": 740})
        page.goto(url + "/")
        page.wait_for_selector("#model-info dd:has-text('test_resnet')")
        assert "0.9375" in page.inner_text("#model-info") and "1.200" in page.inner_text("#model-info")
        page.set_input_files("#files", [str(good), str(bad)])
        page.wait_for_selector("#results li[aria-busy=false] >> nth=1", timeout=30_000)

        first, second = page.locator("#results li").nth(0), page.locator("#results li").nth(1)
        assert first.locator(".pred").inner_text() == want["label"]
        for cls in CLASSES:
            shown = first.locator(f".value[data-class='{cls}']").inner_text()
            assert shown == f"{100 * want['probabilities'][cls]:.1f}%"
        assert first.locator("img.image").is_visible()
        error = second.locator(".error").inner_text()
        assert "notes.txt" in error and "not an image" in error
        assert page.locator("#status").inner_text() == "Done: 1 predicted, 1 failed."

        overlay = first.locator("img.cam-overlay")
        assert not overlay.is_visible()
        first.locator("input.cam-toggle").focus()
        page.keyboard.press("Space")  # the toggle works from the keyboard
        overlay.wait_for(state="visible")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        assert not first.locator("img.image").is_visible()
        assert page.locator("#banner").inner_text().startswith("Research tool, not a medical device.")

        shot = page.screenshot(path=str(tmp_path / "serve.png"))
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("CXRTL_UPDATE_SCREENSHOT") == "1":
            write_bytes(DOCS / "serve.png", _small_png(shot))


def _small_png(data: bytes) -> bytes:
    """The screenshot as a palette PNG: a few tens of kB for the README."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=128)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

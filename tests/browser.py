"""Open a report in Debian's headless chromium (driven by Playwright, no ``playwright install``) and find
what does not fit the page. ``CHROMIUM`` is None when the package is missing: callers skip, naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
SKIP_REASON = "needs Debian's chromium package (apt-get install chromium) and playwright"

# Every rendered element whose box reaches past the viewport's right edge (or before its left edge).
_OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > width + 0.5 || r.left < -0.5) {
      wide.push(`${el.tagName.toLowerCase()} ${Math.round(r.left)}..${Math.round(r.right)}: `
        + (el.textContent || '').trim().slice(0, 60));
    }
  }
  return {width: width, scrollWidth: document.documentElement.scrollWidth, wide: wide};
}"""


def playwright_or_none():
    """``playwright.sync_api`` when it and chromium are installed, else None."""
    if CHROMIUM is None:
        return None
    try:
        from playwright import sync_api
    except ImportError:
        return None
    return sync_api


def render(html_file: Path, width: int = 1280, height: int = 800, screenshot: Path | None = None) -> dict:
    """Load ``html_file`` at ``width`` x ``height``: ``{width, scrollWidth, wide: [element...]}``;
    a full-page PNG to ``screenshot`` when given."""
    sync_api = playwright_or_none()
    assert sync_api is not None, SKIP_REASON
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(Path(html_file).resolve().as_uri())
            found = page.evaluate(_OVERFLOW_JS)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return found

"""report.html as a reader on a laptop sees it: headless chromium at 1280x800, nothing wider than the page.

Uses Debian's ``chromium`` package driven by Playwright (see tests/browser.py); skipped, naming the
package, where it is missing.
"""

from __future__ import annotations

import pytest

from browser import SKIP_REASON, playwright_or_none, render
from cxrtl.paper.report import write_report
from report_payload import demo_like_payload

pytestmark = pytest.mark.skipif(playwright_or_none() is None, reason=SKIP_REASON)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [1, 2])
def test_demo_like_report_fits_1280_px(tmp_path, seeds):
    payload = demo_like_payload(tmp_path, seeds=seeds)
    paths = write_report(tmp_path, payload)
    found = render(paths["html"], 1280, 800)
    assert found["width"] == 1280
    assert found["wide"] == [] and found["scrollWidth"] <= 1280, found["wide"][:5]
    # Table V (16 columns in report.md) is in it, its paper columns grouped under one header.
    html = paths["html"].read_text()
    assert "Table V." in html and "<th colspan='6' class='group'>Paper (published)</th>" in html

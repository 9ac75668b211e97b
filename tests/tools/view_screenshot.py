"""Regenerate the README's screenshot of the HTML report: ``python -m tests.tools.view_screenshot``.

Profiles ``tests/examples/logstats.py`` with ``run --html``, opens the
report in headless Chromium (``tests/browser.py``), searches for
``strptime`` so that the highlighting shows, and writes
``docs/images/view.png``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.browser import Browser

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images" / "view.png"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "cpu.pb.gz"
        subprocess.run(
            [sys.executable, "-m", "pyproperf", "run", "--html", "-o", str(profile),
             str(ROOT / "tests" / "examples" / "logstats.py")],
            check=True, cwd=tmp, stdout=subprocess.DEVNULL,
        )
        with Browser(width=1100, height=350) as b:
            b.open((Path(tmp) / "cpu.html").as_uri() + "#q=strptime")
            b.wait_for("document.body.dataset.ready")
            OUT.write_bytes(b.screenshot())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

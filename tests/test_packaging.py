"""What a user installs: the wheel carries every asset the web station's pages load, and
the pages load nothing from elsewhere (no CDN, no internet at run time)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_has_every_asset_the_pages_load_and_nothing_comes_from_elsewhere(
    tmp_path: Path,
) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("vitalmon-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        pages = {n: z.read(n).decode() for n in names if n.startswith("monitor/web/templates/")}
        scripts = {n: z.read(n).decode() for n in names if n.startswith("monitor/web/static/")}
    assert {"monitor/web/templates/ward.html", "monitor/web/templates/bed.html"} <= set(pages)
    loaded = {
        m for text in pages.values() for m in re.findall(r'(?:src|href)="(/static/[^"]+)"', text)
    }
    assert loaded, pages
    for path in loaded:
        assert f"monitor/web{path}" in names, f"{path} is not in the wheel"
    for name, text in {**pages, **scripts}.items():
        assert not re.search(r"(?:src|href|url\()\s*=?\s*[\"']?(?:https?:)?//", text), name
        assert 'fetch("http' not in text and "fetch('http" not in text, name

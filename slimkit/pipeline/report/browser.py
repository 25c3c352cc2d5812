"""Check a self-contained HTML page (report.html, search.html, compare.html) in headless Chromium.

The page is loaded from disk with every outside request refused (host resolution off, a dead proxy), with a
probe script injected into a temporary copy beside the page. The probe records every image's ``naturalWidth``,
every resource the page requested and every error event, and writes them into the DOM, which ``--dump-dom``
prints; Chromium's own console log (``--enable-logging=stderr``) adds every console message. A screenshot of
the whole page is taken on demand. No WebSocket or DevTools client is needed: only the ``chromium`` binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.errors import DependencyError, ReportError

_PROBE_ID = "slimkit-page-check"
_CATCH = """<script>(function(){window.__slimkitErrors=[];
window.addEventListener('error',function(e){var t=e.target;window.__slimkitErrors.push(
(t&&t!==window&&(t.src||t.href))?('failed to load '+(t.src||t.href).slice(0,80)):String(e.message));},true);
window.addEventListener('unhandledrejection',function(e){window.__slimkitErrors.push(String(e.reason));});})();
</script>"""
_PROBE = """<script>window.addEventListener('load',function(){setTimeout(function(){
var r={images:[].map.call(document.images,function(i){return {src:i.getAttribute('src').slice(0,60),
width:i.naturalWidth,height:i.naturalHeight,alt:i.alt};}),
resources:performance.getEntriesByType('resource').map(function(e){return e.name;}),
errors:window.__slimkitErrors||[],height:document.documentElement.scrollHeight,
width:document.documentElement.scrollWidth};
var p=document.createElement('pre');p.id='PROBE_ID';p.textContent=JSON.stringify(r);document.body.appendChild(p);},0);});
</script>""".replace("PROBE_ID", _PROBE_ID)
_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'<>)]*""")
_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw when it opened one page."""

    page: Path
    images: int
    broken_images: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    height: int = 0
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        out = [f"image not loaded (naturalWidth 0): {s}" for s in self.broken_images]
        out += [f"console: {c}" for c in self.console]
        out += [f"outside reference or request: {u}" for u in self.external]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _require_chromium() -> str:
    exe = find_chromium()
    if exe is None:
        raise DependencyError("Chromium is needed to check a page in a browser and was not found on PATH.",
                              hint="Install Debian's `chromium` package (`make setup` does it when run as root).")
    return exe


def _argv(exe: str, profile: str, *extra: str) -> list[str]:
    argv = [exe, "--headless", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            # nothing leaves the machine: names do not resolve and any proxied request goes nowhere
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox on
    return [*argv, *extra]


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ReportError(f"Chromium did not finish within {timeout:.0f} s ({argv[0]}).",
                          hint="Run again; if it persists, run the same command by hand to see why.") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ReportError(f"Chromium exited with code {proc.returncode}: {tail}",
                          hint="Check that `chromium --headless --dump-dom about:blank` works on this machine.")
    return proc


def _inject(text: str) -> str:
    head = re.search(r"<head[^>]*>", text, flags=re.IGNORECASE)
    text = text[: head.end()] + _CATCH + text[head.end():] if head else _CATCH + text
    body = text.lower().rfind("</body>")
    return text[:body] + _PROBE + text[body:] if body >= 0 else text + _PROBE


def external_references(text: str) -> list[str]:
    """Every absolute or protocol-relative web URL written anywhere in a page's source (none in ours)."""
    return sorted(set(_URL.findall(text)))


def check_page(page: Path, *, screenshot: Path | None = None, timeout: float = 90.0) -> PageCheck:
    """Open ``page`` in headless Chromium and report broken images, console messages and outside requests.

    With ``screenshot``, also write a PNG of the whole page there. Raises :class:`DependencyError` when no
    Chromium is installed and :class:`ReportError` when the page is missing or Chromium fails.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise ReportError(f"No page to check at {page}.", hint="Pass an existing HTML file.")
    exe = _require_chromium()
    source = page.read_text(encoding="utf-8")
    # the probe copy sits beside the page so that a relative reference resolves as it would for the page
    fd, probe_name = tempfile.mkstemp(prefix=".slimkit-check-", suffix=".html", dir=page.parent)
    with tempfile.TemporaryDirectory(prefix="slimkit-chromium-") as profile:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_inject(source))
            proc = _run(_argv(exe, profile, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                              "--dump-dom", Path(probe_name).as_uri()), timeout)
        finally:
            Path(probe_name).unlink(missing_ok=True)
        found = re.search(rf'<pre id="{_PROBE_ID}">(.*?)</pre>', proc.stdout, flags=re.DOTALL)
        if not found:
            raise ReportError(f"Chromium loaded {page.name} but the page check did not report back.",
                              hint="The page may never fire its load event; open it in a browser to see why.")
        import html as _html

        probe = json.loads(_html.unescape(found.group(1)))
        console = [m.group(1).strip() for line in proc.stderr.splitlines() if (m := _CONSOLE.search(line))]
        console += [str(e) for e in probe["errors"]]
        external = set(external_references(source))
        external |= {u for u in probe["resources"] if not u.startswith(("data:", "blob:"))}
        shot = None
        if screenshot is not None:
            screenshot = Path(screenshot).resolve()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            height = max(600, min(int(probe["height"]) + 16, 16000))
            width = max(1200, min(int(probe["width"]), 4000))
            tmp = screenshot.with_name(f".tmp-{screenshot.name}")
            _run(_argv(exe, profile, f"--window-size={width},{height}", f"--screenshot={tmp}",
                       "--virtual-time-budget=5000", page.as_uri()), timeout)
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise ReportError(f"Chromium wrote no screenshot of {page.name}.",
                                  hint="Run `chromium --headless --screenshot` by hand to see why.")
            tmp.replace(screenshot)
            shot = screenshot
    return PageCheck(page=page, images=len(probe["images"]),
                     broken_images=[i["src"] for i in probe["images"] if not i["width"]],
                     console=console, external=sorted(external), height=int(probe["height"]), screenshot=shot)


__all__ = ["PageCheck", "check_page", "external_references", "find_chromium"]

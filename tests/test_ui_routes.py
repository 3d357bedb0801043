"""GET /ui/ (supervisor/ui_routes.py) on the real API app: public static files with a strict CSP, outside the API's
auth, while every API route keeps needing the secret; and the page itself has nothing a strict CSP would block."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from aiohttp import ClientSession

from supervisor.api import make_app, start_api
from supervisor.daemon import Supervisor
from supervisor.states import CLOSE_CODES
from supervisor.ui_routes import UI_DIR


async def _serve(make_settings):
    sup = Supervisor(make_settings(api={"secret": "s3"}))
    runner, port = await start_api(make_app(sup, sup.settings.api, events=sup.events), "127.0.0.1", 0)
    return sup, runner, f"http://127.0.0.1:{port}"


async def test_console_files_are_public_with_strict_headers_and_the_api_is_not(make_settings):
    sup, runner, url = await _serve(make_settings)
    try:
        async with ClientSession() as http:
            async with http.get(url + "/ui/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert "<title>baileys-supervisor console</title>" in await r.text()
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Referrer-Policy"] == "no-referrer"
                etag = r.headers["ETag"]
            async with http.get(url + "/ui/", headers={"If-None-Match": etag}) as r:
                assert r.status == 304
            async with http.get(url + "/ui/app.js") as r:
                assert r.status == 200 and r.content_type == "text/javascript"
            async with http.get(url + "/ui/doctor.json") as r:
                texts = await r.json()
                meaning, fix = CLOSE_CODES[515].meaning, CLOSE_CODES[515].fix
                assert texts["closeCodes"]["515"] == {"meaning": meaning, "fix": fix}
                assert meaning.startswith("restart required")
                assert texts["reasons"]["restartRequired"] == 515
            async with http.get(url + "/ui", allow_redirects=False) as r:
                assert r.status == 301 and r.headers["Location"] == "/ui/"
            async with http.get(url + "/ui/../whatsapp") as r:  # normalised by the client; the API still asks
                assert r.status == 401
            async with http.get(url + "/ui/nothing.js") as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
            async with http.post(url + "/ui/", json={}) as r:
                assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
            async with http.get(url + "/whatsapp") as r:  # the console being open opens nothing else
                assert r.status == 401
            async with http.get(url + "/whatsapp", headers={"X-Internal-Secret": "s3"}) as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
        await sup.shutdown()


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.inputs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and not a.get("src"):
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("src", "href") and value and re.match(r"(https?:)?//", value):
                self.problems.append(f"external {name}: {value}")  # no CDN: the machine may have no internet
        if "id" in a:
            self.ids.add(a["id"] or "")
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        if tag == "input":
            self.inputs.append(a.get("id") or "")


def test_page_has_no_inline_code_no_cdn_and_every_input_is_labelled():
    audit = _Audit()
    audit.feed((UI_DIR / "index.html").read_text())
    assert audit.problems == []
    assert audit.inputs and set(audit.inputs) <= audit.label_for
    js = "".join(p.read_text() for p in UI_DIR.glob("*.js"))
    assert "innerHTML" not in js and "eval(" not in js and "new Function" not in js
    used = set(re.findall(r"\$\('([\w-]+)'\)", js)) | set(re.findall(r"getElementById\('([\w-]+)'\)", js))
    assert used <= audit.ids, used - audit.ids  # every element the scripts look up exists


def _luminance(hex_colour: str) -> float:
    rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast():
    css = (UI_DIR / "app.css").read_text()
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = [("fg", "bg"), ("fg", "card"), ("muted", "bg"), ("muted", "card"), ("accent", "card"),
             ("ok-fg", "ok-bg"), ("warn-fg", "warn-bg"), ("bad-fg", "bad-bg"), ("idle-fg", "idle-bg")]
    low = {f"{a}/{b}": round(contrast(var[a], var[b]), 2) for a, b in pairs if contrast(var[a], var[b]) < 4.5}
    assert low == {}
    # Literal colours: white button text on the accent and danger buttons, the header, the auth-off badge.
    for fg, bg in (("#ffffff", var["accent"]), ("#ffffff", "#a51d1d"), ("#ffffff", "#16202c"), ("#2b2100", "#ffd75e"),
                   ("#cfe3ff", "#16202c")):
        assert contrast(fg, bg) >= 4.5, (fg, bg)
    assert contrast("#000000", "#ffffff") == 21.0  # the formula itself

"""The operator console (GET /ui/) in headless Chromium against the real daemon, real worker, real Baileys and the
WhatsApp Web simulator: sign in, start a tenant, the QR image, the simulator scans it, connected without a reload;
a wrong secret and a stopped daemon get their screens; logout asks first; pairing by code through the form.

Screenshots of each screen go to docs/img/ with BSUP_UI_SCREENSHOTS=1 (docs/ui.md), else to the test's tmp dir.
Page weight and time to first render are printed (`-s`) and recorded in docs/ui.md.
"""

from __future__ import annotations

import re
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from supervisor.ui_routes import UI_DIR

from .e2e_harness import ROOT, Daemon, _http, daemon_config, free_port, wait_for

pytestmark = pytest.mark.e2e

SECRET = "ui-e2e-secret"
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright downloads nothing
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
LIVE = 30_000  # ms: loose bounds for a loaded 2-core machine; each wait ends on the page's own change
PHONE = "972501234567"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = ROOT / "docs" / "img" if os.environ.get("BSUP_UI_SCREENSHOTS") == "1" else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for d in made:
        d.stop()


def start_daemon(daemons: list[Daemon], tmp_path: Path, sim, marker: str, secret: str | None) -> Daemon:
    cfg = daemon_config(tmp_path / "storage", free_port(), sim.ws_url, marker=marker)
    if secret:
        cfg["api"]["secret"] = secret
    workdir = tmp_path / f"daemon{len(daemons)}"
    workdir.mkdir()
    d = Daemon(workdir, cfg)
    daemons.append(d)
    d.start()
    return d


def api(d: Daemon, method: str, path: str) -> dict:
    code, body = _http(method, d.url + path, headers={"X-Internal-Secret": SECRET})
    assert code == 200, body
    return body


def new_page(browser: Browser, width: int = 1100, height: int = 760) -> tuple[Page, list[str]]:
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    # Script errors and CSP violations ("Refused to ..."); not the network log of answers the page expects (401 for
    # a wrong secret, 404 for a tenant not started yet, refused connections to a stopped daemon).
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    return page, problems


def screen(page: Page, name: str) -> None:
    expect(page.locator("body")).to_have_attribute("data-screen", name, timeout=LIVE)


def test_sign_in_start_scan_connected_live_then_logout_asks_first(browser, sim, marker, tmp_path, shots, daemons):
    d = start_daemon(daemons, tmp_path, sim, marker, SECRET)
    page, problems = new_page(browser)
    page.goto(d.url + "/ui/")
    screen(page, "signin")
    perf = page.evaluate("""() => {
        const files = [performance.getEntriesByType('navigation')[0],  // the console's own files, not API answers
                       ...performance.getEntriesByType('resource').filter((r) => r.name.includes('/ui/'))];
        return {fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime, files: files.length,
                bytes: files.reduce((n, r) => n + r.encodedBodySize, 0)};
    }""")
    on_disk = sum(p.stat().st_size for p in UI_DIR.iterdir())
    print(f"\nui: first contentful paint {perf['fcp']:.0f} ms, {perf['files']} files, {perf['bytes']} bytes "
          f"transferred ({on_disk} bytes in {UI_DIR.name}/)")
    page.screenshot(path=shots / "ui-signin.png")

    page.fill("#secret", "not-the-secret")
    page.keyboard.press("Enter")  # keyboard only: the form submits
    expect(page.locator("#signin-error")).to_be_visible(timeout=LIVE)
    expect(page.locator("#signin-error")).to_contain_text("Wrong secret")
    screen(page, "signin")
    page.screenshot(path=shots / "ui-wrong-secret.png")

    page.fill("#secret", SECRET)
    page.get_by_role("button", name="Sign in").click()
    screen(page, "list")
    assert page.evaluate("sessionStorage.length") == 1 and page.context.cookies() == []
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#auth-off")).to_be_hidden()

    page.get_by_label("Tenant id").fill("shop1")
    page.get_by_role("button", name="Open").click()
    screen(page, "tenant")
    page.evaluate("window.__noReload = true")  # gone if anything reloads the document
    page.get_by_role("button", name="Start", exact=True).click()
    img = page.locator("#qr-img")
    expect(img).to_have_attribute("src", re.compile(r"^data:image/png;base64,"), timeout=LIVE)
    expect(page.locator("#qr-count")).to_have_text(re.compile(r"^New QR in (4\d|5\d|60) s$"))  # first ref: 60 s

    # The QR the page shows is the daemon's current QR (same PNG as GET /qr's dataUrl), whose raw string the
    # simulator's phone scans. Compared in a loop: WhatsApp may rotate it between the two reads.
    def shown_qr() -> str | None:
        q = api(d, "GET", "/whatsapp/shop1/qr")
        return q["qr"] if q["dataUrl"] == img.get_attribute("src") else None
    qr = wait_for(shown_qr, 20, "page QR == API QR", interval=0.2)
    page.screenshot(path=shots / "ui-qr.png")

    res = sim.scan(qr, pushName="Shop One")
    assert res["ok"], res
    expect(page.locator("#t-state")).to_have_text("connected", timeout=LIVE)
    assert page.evaluate("window.__noReload") is True
    events = page.locator("#t-events")
    expect(events).to_contain_text("515 restartRequired")
    expect(events).to_contain_text("→ connected")
    shown_at = page.locator("#t-events time").first.get_attribute("datetime")  # the event's own time, not 1970
    assert abs(datetime.fromisoformat(shown_at).timestamp() - time.time()) < 600, shown_at
    expect(page.locator("#qr-box")).to_be_hidden()
    expect(page.locator("#t-details")).to_contain_text("Shop One")
    page.screenshot(path=shots / "ui-connected.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=shots / "ui-tenant-phone.png", full_page=True)
    page.set_viewport_size({"width": 1100, "height": 760})

    page.get_by_role("link", name="← All tenants").click()
    screen(page, "list")
    row = page.locator('tr[data-tenant="shop1"]')
    expect(row).to_contain_text("connected")
    expect(row).to_contain_text("restart required: normal right after a QR scan")  # the doctor's words
    page.screenshot(path=shots / "ui-list.png")
    state_th = page.locator('th[data-key="state"]')
    state_th.get_by_role("button").focus()
    page.keyboard.press("Enter")  # sorting from the keyboard; again reverses
    expect(state_th).to_have_attribute("aria-sort", "ascending")
    page.keyboard.press("Enter")
    expect(state_th).to_have_attribute("aria-sort", "descending")
    page.get_by_label("Filter").fill("no-such-tenant")
    expect(row).to_have_count(0)
    page.get_by_label("Filter").fill("connected")  # by state too
    expect(row).to_have_count(1)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=shots / "ui-list-phone.png", full_page=True)
    page.set_viewport_size({"width": 1100, "height": 760})

    row.get_by_role("link", name="shop1").click()
    screen(page, "tenant")
    expect(page.locator("#t-state")).to_have_text("connected", timeout=LIVE)
    page.get_by_role("button", name="Log out…").click()
    dialog = page.locator("#logout-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("archived")
    expect(dialog).to_contain_text("not deleted")
    page.screenshot(path=shots / "ui-logout-confirm.png")
    page.keyboard.press("Escape")  # cancels: nothing is sent
    expect(dialog).to_be_hidden()
    assert api(d, "GET", "/whatsapp/shop1/status")["state"] == "connected"
    page.get_by_role("button", name="Log out…").click()
    dialog.get_by_role("button", name="Log out").click()
    expect(page.locator("#t-state")).to_have_text("logged_out", timeout=LIVE)
    assert list((tmp_path / "storage" / "whatsapp" / "shop1").glob("auth.logged-out-*"))
    assert problems == []


def test_stopped_daemon_shows_its_screen_and_the_page_comes_back(browser, sim, marker, tmp_path, shots, daemons):
    d = start_daemon(daemons, tmp_path, sim, marker, None)  # no secret: loopback, the page says so
    page, problems = new_page(browser)
    page.goto(d.url + "/ui/#/t/p1")
    screen(page, "tenant")
    expect(page.locator("#auth-off")).to_be_visible()
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#qr-img")).to_be_visible(timeout=LIVE)

    # Linking by code instead of the QR, through the form.
    page.get_by_label("Or link by phone number").fill(f"+{PHONE}")
    page.get_by_role("button", name="Get pairing code").click()
    code = page.locator("#pair-code strong")
    expect(code).to_have_text(re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$"), timeout=LIVE)
    res = sim.enter_code(PHONE, code.inner_text(), pushName="Paired")
    assert res["ok"] and res["linked"], res
    expect(page.locator("#t-state")).to_have_text("connected", timeout=LIVE)

    d.stop()
    screen(page, "down")
    expect(page.locator("#down-text")).to_contain_text("does not answer")
    page.screenshot(path=shots / "ui-unreachable.png")
    d.start()  # same port, same storage: the tenant is linked, the page finds its way back by itself
    screen(page, "tenant")
    expect(page.locator("#t-state")).to_have_text("stopped", timeout=LIVE)
    assert problems == []

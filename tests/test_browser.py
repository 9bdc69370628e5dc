"""The live page at "/" in a real browser: Debian's headless Chromium driven by
Playwright, against the demo as users run it (``rundemo`` under daphne with its quote
feed), while an operator edits a balance in the Django admin in a second browser.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright``
package; never ``playwright install``, which downloads browsers. Without them the test
is skipped on a developer machine, and fails when the ``CI`` variable is set.

It takes the screenshots the README shows: into ``docs/images/`` when
``UPDATE_SCREENSHOTS=1`` is set, into the test's temporary directory otherwise, so
that running the suite leaves the work tree as it was.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.servers import ROOT, deployment
from tests.test_example_client import (
    HALT_EURUSD,
    SAVE_BALANCE,
    SLOW_FEED,
    Forwarder,
    v11_settings,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IMAGES = ROOT / "docs" / "images"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000
EURUSD = '#quotes [data-symbol="EURUSD"]'
NEW_BALANCE = "12345.67"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium; skipped without it, except in CI, where that is a failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    missing = [
        what
        for what, present in (
            ("the playwright package (pip install -r requirements.txt)", sync_playwright),
            (f"{CHROMIUM} (apt-get install chromium)", CHROMIUM.exists()),
        )
        if not present
    ]
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so it must run", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def text_changes(page: Page, selector: str, before: str | None) -> str:
    """Wait until the element's text is non-empty and differs from ``before``."""
    page.wait_for_function(
        "([selector, before]) => {"
        "  const text = document.querySelector(selector)?.textContent ?? '';"
        "  return text !== '' && text !== before;"
        "}",
        arg=[selector, before],
        timeout=TIMEOUT_MS,
    )
    return page.text_content(selector) or ""


def test_live_page_streams_quotes_and_shows_an_admin_save(browser: Browser, tmp_path: Path) -> None:
    """Alice logs in on the live page and sees quotes tick and her state seeded over REST;
    an admin then changes her balance in the Django admin, and her page shows it; her
    live equity shows, and mobile mode throttles EURUSD to one quote a second."""
    shots = IMAGES if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "shots"
    with deployment("embedded", tmp_path) as demo:
        base = f"http://{demo.start_server('--rate', '20')}"
        live = browser.new_context(viewport=VIEWPORT).new_page()
        problems: list[str] = []
        live.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        live.on("console", lambda msg: msg.type == "error" and problems.append(msg.text))

        # The landing page keeps the demo's useful links.
        live.goto(f"{base}/")
        assert live.get_attribute('footer a[href="/admin/"]', "href") == "/admin/"
        assert live.locator('footer a[href="/api/token/"]').count() == 1

        live.fill("#username", "alice")
        live.fill("#password", "alice-demo-pass")
        live.click('#login-form [type="submit"]')
        live.wait_for_selector('#state[data-state="authorized"]', timeout=TIMEOUT_MS)

        # Balances, trades and alerts come from GET /api/snapshot/, decimals as sent.
        text_changes(live, "#balance-1001 .balance", None)
        assert live.text_content("#balance-1001 .balance") == "10000.00"
        assert live.text_content("#balance-1002 .balance") == "10000.00"
        assert live.locator("#trades tbody tr").count() == 3
        assert live.text_content("#trade-100101 .open-price") == "1.085000"
        assert live.locator("#alerts tbody tr").count() == 2

        # Quotes tick: the bid cell changes, and the row says which way.
        first = text_changes(live, f"{EURUSD} .bid", None)
        text_changes(live, f"{EURUSD} .bid", first)
        live.wait_for_function(
            "(row) => ['up', 'down'].includes(document.querySelector(row).dataset.dir)",
            arg=EURUSD,
            timeout=TIMEOUT_MS,
        )
        assert float(live.text_content(f"{EURUSD} .bid") or "nan") < float(
            live.text_content(f"{EURUSD} .ask") or "nan"
        )

        # The frame log pauses while quotes keep ticking, and catches up on resume.
        last_line = "(l) => l.lastElementChild.textContent"
        live.click("#pause-log")
        frozen = live.eval_on_selector("#log", last_line)
        bid = text_changes(live, f"{EURUSD} .bid", live.text_content(f"{EURUSD} .bid"))
        text_changes(live, f"{EURUSD} .bid", bid)
        assert live.eval_on_selector("#log", last_line) == frozen
        assert "held" in (live.text_content("#log-status") or "")
        live.click("#pause-log")
        assert live.eval_on_selector("#log", last_line) != frozen
        assert live.locator("#log li").count() <= 200

        # A notification for login 1001, from another process.
        demo.manage("ws_notify", "Margin level below 150%", "--login", "1001", "--level", "warning")
        live.wait_for_selector('#notifications li[data-level="warning"]', timeout=TIMEOUT_MS)
        assert "Margin level below 150%" in (live.text_content("#notifications") or "")

        # An operator changes the balance of login 1001 in the admin, in another browser.
        seq = int(live.text_content("#balance-1001 .seq") or "0")
        admin = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        admin.goto(f"{base}/admin/login/?next=/admin/broker/balance/")
        admin.fill("#id_username", "admin")
        admin.fill("#id_password", "admin")
        admin.click('input[type="submit"]')
        admin.wait_for_url("**/admin/broker/balance/", timeout=TIMEOUT_MS)
        admin.get_by_role("link", name="1001 (Alice main)").click()
        admin.fill("#id_balance", NEW_BALANCE)
        save_screenshot(admin, shots, "admin-balance.png")
        admin.click('input[name="_save"]')
        admin.wait_for_url("**/admin/broker/balance/", timeout=TIMEOUT_MS)

        # Alice's page shows it: the `b` frame right after the last one she applied.
        assert text_changes(live, "#balance-1001 .balance", "10000.00") == NEW_BALANCE
        assert live.text_content("#balance-1001 .seq") == str(seq + 1)
        assert live.text_content("#balance-1002 .balance") == "10000.00"
        assert live.get_attribute("#state", "data-state") == "authorized"
        live.wait_for_selector("#equity-1001 .equity:not(:empty)", timeout=TIMEOUT_MS)
        save_screenshot(live, shots, "live-page.png", full_page=True)

        # Mobile mode: subscribed again with max_rate 1, EURUSD (a quote every 0.3 s from
        # the feed) comes at most once a second, the latest one.
        live.click("#mobile")
        mobile, quote = '"max_rate":1}', '["t","EURUSD"'
        live.wait_for_function(
            "([mobile, quote]) => {"
            "  const l = [...document.querySelectorAll('#log li')].map((i) => i.textContent);"
            "  const at = l.findLastIndex((t) => t.includes(mobile));"
            "  return at >= 0 && l.slice(at).filter((t) => t.includes(quote)).length >= 4;"
            "}",
            arg=[mobile, quote],
            timeout=TIMEOUT_MS,
        )
        lines = live.eval_on_selector_all("#log li", "(l) => l.map((i) => i.textContent)")
        at = max(i for i, line in enumerate(lines) if mobile in line)
        quotes = [line for line in lines[at:] if quote in line]
        # The ts of three throttled quotes, after the one the subscribe is answered with.
        stamps = [int(line.rsplit(",", 1)[1].rstrip("]")) for line in quotes[1:4]]
        gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
        assert min(gaps) >= 600, (gaps, quotes)
        live.click("#mobile")
        assert live.get_attribute("#mobile", "aria-pressed") == "false"
        assert not problems, problems


def log_lines(page: Page, pattern: str) -> int:
    """How many lines of the page's frame log contain ``pattern``."""
    count = "(items, p) => items.filter((i) => i.textContent.includes(p)).length"
    return int(page.eval_on_selector_all("#log li", count, pattern))


def wait_log(page: Page, pattern: str, more_than: int = 0) -> None:
    page.wait_for_function(
        "([p, n]) => [...document.querySelectorAll('#log li')]"
        "  .filter((i) => i.textContent.includes(p)).length > n",
        arg=[pattern, more_than],
        timeout=TIMEOUT_MS,
    )


def test_live_page_speaks_protocol_v1_1(browser: Browser, tmp_path: Path) -> None:
    """One page load against the demo (PostgreSQL, Redis, daphne) behind a forwarder, as
    a deploy runs it: the heartbeat age shows, the equity row moves with the quotes,
    a halt from the shell changes the symbol's row, mobile mode re-subscribes with
    max_rate 1 and back, a connection that goes silent is taken for dead and resumed,
    and a SIGTERM drain moves the page to the new server with resume, losing no frame."""
    with deployment("redis", tmp_path) as demo:
        demo.env["BROKER_WS_JSON"] = v11_settings()
        forwarder = Forwarder(demo.start_server(*SLOW_FEED))
        context = browser.new_context(viewport=VIEWPORT)
        live = context.new_page()
        problems: list[str] = []
        live.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        try:
            live.goto(f"http://{forwarder.host}/")
            live.fill("#username", "alice")
            live.fill("#password", "alice-demo-pass")
            live.click('#login-form [type="submit"]')
            live.wait_for_selector('#state[data-state="authorized"]', timeout=TIMEOUT_MS)
            assert live.text_content("#protocol") == "protocol 1.1"
            text_changes(live, "#balance-1001 .balance", None)

            # Live equity of 1001 (an open EURUSD trade) moves with each EURUSD quote.
            live.wait_for_selector('#equity-1001[data-updates="2"]', timeout=TIMEOUT_MS)
            assert live.text_content("#equity-1001 .margin-level").endswith(" %")  # type: ignore[union-attr]
            # Idle between quotes: heartbeats come, their age shows, the interval is learned.
            live.wait_for_function(
                "() => /^heartbeat [0-9.]+ s ago, every [0-9.]+ s$/"
                ".test(document.querySelector('#heartbeat').textContent)",
                timeout=TIMEOUT_MS,
            )

            # A halt published from another process: the row says so, and looks it.
            assert live.get_attribute(EURUSD, "data-status") is None
            demo.shell(HALT_EURUSD)
            live.wait_for_selector(f'{EURUSD}[data-status="halted"]', timeout=TIMEOUT_MS)
            assert live.text_content(f"{EURUSD} .status") == "halted"
            background = live.eval_on_selector(
                f"{EURUSD} .bid", "(c) => getComputedStyle(c).backgroundImage"
            )
            assert "gradient" in background, background

            # Mobile mode: unsubscribe, subscribe with max_rate 1; the status comes back
            # after the last quote. And back without it.
            subscribed = log_lines(live, '"event":"subscribed"')
            live.click("#mobile")
            wait_log(live, '"max_rate":1}')
            wait_log(live, '"event":"subscribed"', subscribed)
            assert live.get_attribute("#mobile", "aria-pressed") == "true"
            wait_log(live, '["s","EURUSD","halted"', 1)
            live.click("#mobile")
            wait_log(live, '"event":"subscribed"', subscribed + 1)
            assert live.get_attribute("#mobile", "aria-pressed") == "false"

            # The connection goes silent without closing: dead after 2.5 intervals,
            # reconnected with resume and the epochs of "authorized".
            authorized = log_lines(live, '"event":"authorized"')
            forwarder.stall()
            wait_log(live, "nothing received for")
            wait_log(live, '"event":"authorized"', authorized)
            assert log_lines(live, '"resume":{"1001":') == 1
            assert log_lines(live, '"epochs":{"1001":"') == 1
            forwarder.cut_stalled()
            live.wait_for_selector('#state[data-state="authorized"]', timeout=TIMEOUT_MS)

            # A deploy: a new server joins, the old one gets SIGTERM and drains. The page
            # reconnects within the window (at its random moment, or at the 4009 if the
            # server's random moment came first), with resume; a balance saved meanwhile
            # arrives once, with the next seq, and nothing is fetched over REST.
            forwarder.target = demo.start_server("--no-feed")
            seq = int(live.text_content("#balance-1001 .seq") or "0")
            fetched = log_lines(live, "GET /api/snapshot/")
            authorized = log_lines(live, '"event":"authorized"')
            demo.servers[0].send_signal(signal.SIGTERM)
            live.wait_for_selector("#drains:text('1')", timeout=TIMEOUT_MS)
            demo.shell(SAVE_BALANCE.format(NEW_BALANCE))
            assert text_changes(live, "#balance-1001 .balance", "10000.00") == NEW_BALANCE
            assert live.text_content("#balance-1001 .seq") == str(seq + 1)
            wait_log(live, '"event":"authorized"', authorized)
            assert log_lines(live, '"resume":{"1001":') == 2
            demo.servers[0].wait(10)
            live.wait_for_selector('#state[data-state="authorized"]', timeout=TIMEOUT_MS)
            assert log_lines(live, "GET /api/snapshot/") == fetched
            assert live.text_content("#balance-1001 .seq") == str(seq + 1)
            assert not problems, problems
        except BaseException:
            # What the page saw, in the failure report.
            print(live.eval_on_selector_all("#log li", "(l) => l.map((i) => i.textContent)"))
            raise
        finally:
            context.close()  # before the servers stop: no drain to wait for
            forwarder.close()


def save_screenshot(page: Page, folder: Path, name: str, **options: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), **options)

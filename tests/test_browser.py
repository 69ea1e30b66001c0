"""The web page end to end in headless Chromium (Debian's package, driven by Playwright): upload and
drag-and-drop real X-rays, read the result, see the film and (on request) the heatmap, see a clear message for
rejected files, and load nothing from outside the server. A missing browser fails the test; it is never skipped."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from axe_playwright_python.sync_playwright import Axe
from PIL import Image
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from pneumoscan.core.metrics import format_figure
from pneumoscan.data.decode import read_gray
from pneumoscan.inference.explain import MAX_PANEL
from pneumoscan.models.card import load_card
from pneumoscan.serving.app import create_app
from tests.builders import UNCHECKED, dicom_bytes, running

CHROMIUM = Path("/usr/bin/chromium")
WARD = "ward.example"  # a ward computer's name for the service, over plain HTTP
# The features Playwright turns off (its chromiumSwitches.ts): Chromium keeps only the last --disable-features given,
# so ours repeats them, and launched() fails if Playwright's list holds a name that ours does not
PLAYWRIGHTS_OFF = ["AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
                   "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
                   "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect", "TcpPortRandomizationWin",
                   "OptimizationHints", "NetworkTimeServiceQuerying", "AimEnabled", "PreconnectToSearch",
                   "msForceBrowserSignIn", "msEdgeUpdateLaunchServicesPreferredVersion"]
# Each new window (a context's first tab) loaded the address bar's suggestion popups, two WebUI pages in a renderer of
# their own, which a headless window never shows: half of Chromium's CPU for opening the reading page in a new
# context (0.75 -> 0.35 s). The page itself is not touched.
OFF = ["WebUIOmniboxPopup", "WebUIOmniboxAimPopup"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--disable-features={','.join(PLAYWRIGHTS_OFF + OFF)}",
        # a name for the loopback service that is no "localhost": a page loaded from it is no secure context (as one
        # opened over plain HTTP from another computer), where 127.0.0.0/8 is one to Chromium
        f"--host-resolver-rules=MAP {WARD} 127.0.0.1"]
TIMEOUT_MS = 30_000  # a shared 2-core machine can be slow
# for expect() too: its assertions wait 5 s whatever a page's default timeout (a first heatmap loads torch into the
# service: seconds, more on a busy machine); every browser test imports this module
expect.set_options(timeout=TIMEOUT_MS)
# the viewer's caption of a film shown from the service's decode (?image=true): its rendering's size, the service's
SERVICE_CAPTION = f"as decoded by the service (8-bit, at most {MAX_PANEL:,} pixels a side)."
AXE = Axe()  # axe-core's script as the package bundles it: nothing is fetched
AXE_OPTIONS = {"resultTypes": ["violations"]}  # what Axe.run asks axe.run for


def serious_violations(page: Page) -> list[str]:
    """What axe-core reports on the page as it stands, serious or critical: each rule with the elements it failed on
    (the reading page's states, tests/test_page.py; the evaluation reports, tests/test_report.py)."""
    # axe-core (a 550 KB script) is put in each document once, not once a state: Axe.run compiles it again each call
    if not page.evaluate("() => typeof axe === 'object' && typeof axe.run === 'function'"):
        page.evaluate(AXE.axe_script)
    found = page.evaluate("(options) => axe.run(options)", AXE_OPTIONS)["violations"]
    return [f"{v['id']}: {v['help']} ({', '.join(str(n['target']) for n in v['nodes'])})" for v in found
            if v["impact"] in ("serious", "critical")]


def run_server(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn in a background thread, on a free loopback port, until the generator is closed."""
    with running(uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))) as url:
        yield url


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    yield from run_server(create_app(tiny_bundle))


def _own_browser_lines() -> list[list[str]]:
    """The command lines of the Chromium browser processes this process launched (through Playwright's driver, and
    any wrapper script that runs the browser as its child): another worker's browser is not ours to judge."""
    def parent(pid: str) -> str:
        with contextlib.suppress(OSError, IndexError):
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        return ""

    def ours(pid: str) -> bool:
        while pid not in ("", "0", "1"):
            if (pid := parent(pid)) == str(os.getpid()):
                return True
        return False

    lines = []
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = proc.read_bytes().decode(errors="replace").split("\0")
            if ARGS[-1] in line and not any(a.startswith("--type=") for a in line) and ours(proc.parent.name):
                lines.append(line)
    return lines


def launched(p: Playwright) -> Browser:
    """Debian's Chromium launched with ARGS; a missing browser fails the test, never skips it. Chromium keeps only
    the last --disable-features, so where Playwright turns off a feature ARGS does not name (a newer Playwright's
    list), ARGS takes it in and the browser is launched again: ours must not turn Playwright's defaults back on."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium package (make browser)"
    for _ in range(2):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        lines = _own_browser_lines()
        assert lines, "no Chromium browser process of this worker with ARGS found"
        off = [a.split("=", 1)[1].split(",") for a in lines[-1] if a.startswith("--disable-features=")]
        if not (lost := [name for name in off[0] if name not in off[-1]]):
            return browser
        browser.close()
        logging.getLogger(__name__).warning("Playwright turns off %s too: added to ARGS", lost)
        PLAYWRIGHTS_OFF.extend(lost)
        ARGS[ARGS.index(next(a for a in ARGS if a.startswith("--disable-features=")))] = (
            f"--disable-features={','.join(PLAYWRIGHTS_OFF + OFF)}")
    raise AssertionError(f"ARGS turns on what Playwright turns off: {lost}")


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium (``launched``), closed on leaving."""
    with sync_playwright() as p:
        browser = launched(p)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def new_page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own (no cookies, storage or cache shared with another), closed on leaving."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        page.context.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    with new_page(browser) as page:
        yield page


def drop_file(page: Page, data: bytes, name: str, mime: str) -> None:
    """Drag-and-drop a file onto the drop zone, the way a user drops one from the desktop."""
    transfer = page.evaluate_handle(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: mime }));
            return dt;
        }""",
        [base64.b64encode(data).decode("ascii"), name, mime],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def film_shown(page: Page) -> tuple[int, int]:
    """The (width, height) of the film in the viewer, once it is drawn."""
    page.wait_for_function("() => view.gray !== null && /zoom/.test(document.getElementById('readout-wl').textContent)")
    return tuple(page.evaluate("() => [view.w, view.h]"))


def test_upload_xray_see_result_and_heatmap(page: Page, server: str, tiny_bundle: Path, data_root: Path,
                                            tmp_path: Path) -> None:
    card = load_card(tiny_bundle)
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(server)
    expect(page.locator("#card")).to_contain_text(card.model_id)
    expect(page.locator("#card")).to_contain_text("AUC")
    # the validation figures name the threshold they were measured at (after `threshold`, not the one in force)
    expect(page.locator("#card")).to_contain_text(f"at threshold {format_figure(card.val_metrics['threshold'])}")
    expect(page.locator("#card")).to_contain_text(card.data_fingerprint)
    expect(page.locator("#intended-use")).to_contain_text("aged 1 to 5")

    # upload a real full-size X-ray through the file picker
    original = sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
    page.set_input_files("#file", original)
    expect(page.locator("#result")).to_be_visible()
    label = page.locator("#label").inner_text()
    assert label in card.classes
    expect(page.locator("#probability")).to_contain_text(f"threshold {card.threshold:.3f}")
    probability = float(page.locator("#bar").get_attribute("aria-valuenow"))
    assert 0.0 <= probability <= 1.0
    assert label == (card.positive if probability >= card.threshold else card.classes[0])
    # the bar is filled to the probability and marked at the threshold
    fill = page.eval_on_selector("#bar-fill",
                                 "e => e.getBoundingClientRect().width / e.parentElement.getBoundingClientRect().width")
    mark = page.eval_on_selector("#bar-threshold", "e => parseFloat(e.style.left) / 100")
    assert fill == pytest.approx(probability, abs=0.01) and mark == pytest.approx(card.threshold, abs=0.001)
    assert film_shown(page) == Image.open(original).size  # the browser's own decode, at full size
    expect(page.locator("#legend")).to_be_hidden()

    # the heatmap is computed on request, and hidden again with its toggle
    page.click("#heatmap-button")
    expect(page.locator("#legend")).to_be_visible()
    assert page.is_checked("#heatmap-toggle")
    page.uncheck("#heatmap-toggle")
    expect(page.locator("#legend")).to_be_hidden()
    expect(page.locator("#warnings li")).to_have_text(
        ["Scope: no DICOM tags: not checked to be a frontal chest radiograph of a child of 1-5 years",
         f"Scope: {UNCHECKED}"])  # the tiny bundle records no appearance of its training films

    # a rejected file gives a clear message and hides the old result
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                          "buffer": b"not an X-ray\n" * 10}])
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("Rejected: unsupported content type 'text/plain'")
    expect(page.locator("#result")).to_be_hidden()
    data = original.read_bytes()
    page.set_input_files("#file", files=[{"name": "cut.jpeg", "mimeType": "image/jpeg",
                                          "buffer": data[: len(data) // 3]}])
    expect(page.locator("#error")).to_contain_text("Rejected: cannot read the image")
    page.set_input_files("#file", files=[{"name": "empty.png", "mimeType": "image/png", "buffer": b""}])
    expect(page.locator("#error")).to_contain_text("empty")
    # from a file, as a user picks one: a 21 MB buffer took 6.6 s of the test's 10 through Playwright's pipe
    huge = tmp_path / "huge.jpeg"
    huge.write_bytes(data + bytes(21 * 2**20))
    page.set_input_files("#file", huge)
    # checked before uploading (the server's own 413 words it differently)
    expect(page.locator("#error")).to_contain_text(
        f"the file is {float(f'{huge.stat().st_size / 2**20:.3g}'):g} MB; the limit is 20 MB")

    # drag-and-drop another real X-ray: the result comes back and the error goes away
    dropped = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    drop_file(page, dropped.read_bytes(), dropped.name, "image/jpeg")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    assert not page.is_checked("#heatmap-toggle") and page.is_disabled("#heatmap-toggle")  # a new film: no map yet

    # a file the browser cannot display (DICOM): the viewer shows the service's decode of it
    drop_file(page, dicom_xray(dropped), "scan.dcm", "application/dicom")
    expect(page.locator("#caption")).to_contain_text("DICOM")
    assert film_shown(page) == Image.open(dropped).size
    expect(page.locator("#warnings")).to_contain_text("Scope: BodyPartExamined not recorded")  # scored, but flagged
    drop_file(page, dropped.read_bytes(), dropped.name, "image/jpeg")
    expect(page.locator("#caption")).to_be_empty()
    expect(page.locator("#warnings li")).to_have_text(
        ["Scope: no DICOM tags: not checked to be a frontal chest radiograph of a child of 1-5 years",
         f"Scope: {UNCHECKED}"])  # the tiny bundle records no appearance of its training films
    # every film is listed, the refused ones with their reason
    expect(page.locator("#films tbody tr")).to_have_count(8)
    expect(page.locator("#films tbody tr", has_text="rejected: ")).to_have_count(4)

    assert not errors or all("Failed to load resource" in e for e in errors), errors
    assert requested and all(u.startswith(server) or u.startswith(("data:", "blob:")) for u in requested), requested


def dicom_xray(jpeg: Path) -> bytes:
    """The X-ray as a 12-bit DICOM file."""
    return dicom_bytes(read_gray(jpeg).astype(np.uint16) * 16)


CHEST_TAGS = {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA", "PatientAge": "003Y",
              "PatientSex": "F", "StudyDate": "20230315"}


@pytest.mark.parametrize("name", ["IM0001", "IM0001.dcm"], ids=["no-extension", "dcm"])
def test_dicom_recognised_by_its_bytes(page: Page, server: str, data_root: Path, tmp_path: Path, name: str) -> None:
    """A DICOM exported without an extension (as PACS often do: no name to go by, no type from the browser) is
    recognised from its bytes like a .dcm one: its header facts are listed and the film is shown (the browser
    cannot decode it: the page asks the service for its decode), and so is its heatmap."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    jpeg = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    study = "1.2.826.0.1.3680043.8.498.4242"
    path = tmp_path / name
    path.write_bytes(dicom_bytes(read_gray(jpeg).astype(np.uint16) * 16, StudyInstanceUID=study, **CHEST_TAGS))
    page.goto(server)
    expect(page.locator("#card")).to_contain_text("AUC")
    # the file picker shows every file (an accept filter hides IM0001 or greys it out), and the service judges it
    assert page.locator("#file").get_attribute("accept") is None
    page.set_input_files("#file", path)
    expect(page.locator("#result")).to_be_visible()
    facts = page.locator("#film")
    for text in ["3 years", "F", "PA", "DX", "2023-03-15", study]:
        expect(facts).to_contain_text(text)
    expect(facts).not_to_contain_text("no DICOM tags")
    # an in-scope pediatric frontal chest film: only that the tiny bundle checks no film's content
    expect(page.locator("#warnings li")).to_have_text([f"Scope: {UNCHECKED}"])
    expect(page.locator("#caption")).to_have_text(f"DICOM film {SERVICE_CAPTION}")
    assert film_shown(page) == Image.open(jpeg).size
    page.click("#heatmap-button")
    expect(page.locator("#legend")).to_be_visible()
    assert page.evaluate("() => view.cam !== null && view.cam.length === view.w * view.h")
    expect(page.locator("#caption")).not_to_contain_text("cannot be shown")
    assert not errors, errors


@pytest.fixture(scope="module")
def locked_server(tiny_bundle: Path) -> Iterator[str]:
    """The app with an API key (and the default Host allow-list)."""
    from pneumoscan.serving.guard import Access

    yield from run_server(create_app(tiny_bundle, access=Access(api_key=PAGE_KEY)))


PAGE_KEY = "page-key-0123456789abcdef"


def test_page_works_with_an_api_key(page: Page, locked_server: str, tiny_bundle: Path, data_root: Path) -> None:
    """Without the key the page says what is wrong; typed into the field, it loads the card and analyses films."""
    page.goto(locked_server)
    expect(page.locator("#error")).to_contain_text("an API key is required")
    film = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]
    page.set_input_files("#file", film)
    expect(page.locator("#error")).to_contain_text("Not read: an API key is required")
    page.fill("#api-key", "wrong-key-0123456789")
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#error")).to_contain_text("a valid API key is required")
    page.fill("#api-key", PAGE_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#card")).to_contain_text(load_card(tiny_bundle).model_id)
    expect(page.locator("#error")).to_be_hidden()
    page.set_input_files("#file", film)
    expect(page.locator("#result")).to_be_visible()
    assert page.locator("#label").inner_text() in load_card(tiny_bundle).classes

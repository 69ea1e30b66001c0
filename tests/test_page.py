"""The reader's page: the API options it relies on (the raw Grad-CAM map, the decoded film, the DICOM facts
without the patient's name or id), then the page itself in headless Chromium: window/level, invert and zoom as
pixel operations, the heatmap only on request in viridis, the sortable list and its CSV, the print view, a name for
every control, and a reply a proxy gives in the service's place never read as its answer."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, Route, WebError, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

import pneumoscan.data.scope as scope
from pneumoscan.data import tasks
from pneumoscan.data.decode import read_gray
from pneumoscan.data.readers.pillow import OWN_MAP
from pneumoscan.inference.explain import NEGATIVE, caption, explain_array, heatmap_scale, panel_shape
from pneumoscan.inference.predict import Predictor, format_results, predict_paths
from pneumoscan.models.card import load_card, save_card
from pneumoscan.serving.app import create_app
from tests.builders import SCORE_TOL, dicom_bytes, nudge_weights, running
from tests.test_browser import SERVICE_CAPTION, TIMEOUT_MS, drop_file, run_server, serious_violations
from tests.test_heatmap_scale import assert_legend_is_the_caption, sentence
from tests.test_serve import with_threshold

PREFIX = "data:image/png;base64,"
TAGS = dict(PatientAge="004Y", PatientSex="F", ViewPosition="PA", BodyPartExamined="CHEST", StudyDate="20240105",
            PatientName="Doe^Jane", PatientID="MRN-4471", StudyInstanceUID="1.2.3.4")
def png_of(url: str) -> Image.Image:
    assert url.startswith(PREFIX)
    return Image.open(io.BytesIO(base64.b64decode(url[len(PREFIX):])))


@pytest.fixture(scope="module")
def full_size(data_root: Path) -> Path:
    return sorted((data_root / "val" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def small(data_root: Path) -> Path:
    """A 224 px film: quick to upload and redraw where the film's size does not matter."""
    return sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def tagged_dicom(full_size: Path) -> bytes:
    """A 12-bit DICOM of a real film with the tags the film panel shows, and a name and id it must not."""
    return dicom_bytes(read_gray(full_size).astype(np.uint16) * 16, **TAGS)


# ---------------------------------------------------------------- the API options the page uses


def test_heatmap_map_is_the_raw_gradcam(tiny_bundle: Path, full_size: Path, tmp_path: Path) -> None:
    """The raw map, and that a map saved and given back is refused as pneumoscan's output, never scored as a film
    (one of a NORMAL film was scored PNEUMONIA 0.943)."""
    data = full_size.read_bytes()
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", params={"heatmap": "map"}, files={"file": ("x.jpeg", data, "image/jpeg")})
        plain = client.post("/v1/predict", files={"file": ("x.jpeg", data, "image/jpeg")}).json()
        saved = base64.b64decode(r.json()["heatmap"].split(",", 1)[1])
        again = client.post("/v1/predict", files={"file": ("map.png", saved, "image/png")})
    assert again.status_code == 422 and again.json()["error"] == f"cannot read the image: {OWN_MAP}"
    (tmp_path / "map.png").write_bytes(saved)
    assert predict_paths(tiny_bundle, [tmp_path]) == [{"path": str(tmp_path / "map.png"), "error": OWN_MAP}]
    assert r.status_code == 200, r.text
    cam = png_of(r.json()["heatmap"])
    predictor = Predictor(tiny_bundle)
    gray = read_gray(data, target=predictor.card.spec.decode_target)
    expected = np.round(explain_array(predictor, gray) * 255)
    assert cam.mode == "L" and cam.size == panel_shape(*gray.shape)[::-1]
    assert np.abs(np.asarray(cam, np.float32) - expected).max() <= 1  # the map itself, not a coloured overlay
    assert r.json()["image"] is None and plain["heatmap"] is None  # neither computed unless asked
    assert r.json()["probability"] == pytest.approx(plain["probability"], abs=1e-5)


def test_image_and_film_facts_without_name_or_id(tiny_bundle: Path, tagged_dicom: bytes) -> None:
    with TestClient(create_app(tiny_bundle)) as client:
        r = client.post("/v1/predict", params={"image": "true"},
                        files={"file": ("scan.dcm", tagged_dicom, "application/dicom")})
        bad = client.post("/v1/predict", params={"heatmap": "colour"},
                          files={"file": ("scan.dcm", tagged_dicom, "application/dicom")})
    assert r.status_code == 200, r.text
    body = r.json()
    decoded = read_gray(tagged_dicom, dicom=True)  # the whole film, not the model's reduced copy
    film = png_of(body["image"])
    assert film.mode == "L" and film.size == panel_shape(*decoded.shape)[::-1] and body["heatmap"] is None
    assert max(film.size) > 4 * load_card(tiny_bundle).size
    small = Image.fromarray(decoded).resize(film.size, Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(film, np.int16) - np.asarray(small, np.int16)).mean() < 2
    assert {k: body[k] for k in ("age_years", "sex", "view", "modality", "study_date")} == {
        "age_years": 4.0, "sex": "F", "view": "PA", "modality": "DX", "study_date": "2024-01-05"}
    text = json.dumps({k: v for k, v in body.items() if k != "image"})  # base64 may spell anything
    assert "DOE" not in text.upper() and "MRN-4471" not in text and "patient" not in text.lower()
    assert bad.status_code == 422 and "heatmap" in bad.json()["error"]


CT_TAGS = {**TAGS, "Modality": "CT", "SeriesInstanceUID": "1.2.3.4.5"}


def test_in_scope_is_false_where_no_report_is_filed(tiny_bundle: Path, tagged_dicom: bytes, full_size: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A CT slice was read "PNEUMONIA 0.999" like any film while format=dicom-sr refused it: in_scope says the
    reading does not apply, by the same rule (scope.outside_scope) on the answer's final warnings, so a kind of
    warning added to both later counts too. A JPEG's "no DICOM tags" and an in-scope DICOM stay in scope."""
    ct = dicom_bytes(read_gray(full_size).astype(np.uint16) * 16, **CT_TAGS)
    jpeg = full_size.read_bytes()
    with TestClient(create_app(tiny_bundle)) as client:
        def ask(data: bytes, name: str, **params: str) -> httpx.Response:
            kind = "image/jpeg" if name.endswith(".jpeg") else "application/dicom"
            return client.post("/v1/predict", params=params, files={"file": (name, data, kind)})

        chest, slice_, photo = ask(tagged_dicom, "a.dcm").json(), ask(ct, "b.dcm").json(), ask(jpeg, "c.jpeg").json()
        refused = ask(ct, "b.dcm", format="dicom-sr")
    assert chest["in_scope"] is True
    assert slice_["in_scope"] is False and slice_["probability"] >= 0 and slice_["label"]  # the number is kept
    assert any(w.startswith("Modality CT is not a radiograph") for w in slice_["warnings"])
    assert refused.status_code == 422 and "no coded finding" in refused.json()["error"]
    assert photo["in_scope"] is True and scope.NO_TAGS in photo["warnings"]

    # a new kind of warning, added to the kinds and to the answer's warnings: out of scope with no change here
    new = scope.WarningKind("a kind of warning added later", out_of_scope=True)
    monkeypatch.setattr(scope, "KINDS", (new, *scope.KINDS))
    described = scope.describe
    monkeypatch.setattr(scope, "describe", lambda *a: (lambda d: {**d, "warnings": [*d["warnings"], new.text()]})(
        described(*a)))
    with TestClient(create_app(tiny_bundle)) as client:
        body = ask(jpeg, "c.jpeg").json()
    assert body["in_scope"] is False and new.text() in body["warnings"]


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    yield from run_server(create_app(tiny_bundle))


SCREEN = {"viewport": {"width": 1280, "height": 1000}, "accept_downloads": True}


# The model card loaded (its intended use on the page) or refused: looked for at each frame, where expect() looks
# 0.1, 0.25, 0.5 and then 1 s apart (the card's request is answered after the page's load event)
CARD_SETTLED = ("() => document.getElementById('intended-use').textContent !== ''"
                " || !document.getElementById('error').hidden")


def card_shown(page: Page) -> None:
    """The model card on the page: waited for at each frame (at most TIMEOUT_MS), then asserted by expect()."""
    with suppress(PlaywrightTimeoutError):
        page.wait_for_function(CARD_SETTLED)
    expect(page.locator("#intended-use")).not_to_be_empty()


@contextmanager
def loaded(page: Page, server: str) -> Iterator[Page]:
    """``page`` with the reading page loaded; a script error on it fails the test."""
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    card_shown(page)
    yield page
    assert not errors, errors


@contextmanager
def opened_page(browser: Browser, server: str, **device: object) -> Iterator[Page]:
    """The page loaded in a context of its own (a 1280 x 1000 screen, or the device's options: TOUCH), closed after;
    a script error on it fails the test."""
    context = browser.new_context(**{**SCREEN, **device})
    try:
        with loaded(context.new_page(), server) as page:
            yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def tabs(browser: Browser) -> Iterator[BrowserContext]:
    """The context (a 1280 x 1000 screen) whose tabs the module's ``page`` tests run in, one tab each: a context of
    its own a test cost Chromium about 0.35 s more CPU (nothing cached or compiled; the page files' Chromium CPU
    217 -> 190 s). The page keeps nothing beyond its tab (sessionStorage), which ``page`` holds it to; a test that
    changes the context itself (its clock, its options) opens a context of its own."""
    context = browser.new_context(**SCREEN)
    yield context
    context.close()


@pytest.fixture(scope="module")
def opener(tabs: BrowserContext, server: str) -> Iterator[Page]:
    """A tab of ``tabs`` at the service's /v1/model (a document that runs no script and keeps nothing), from which
    ``page`` opens each test's tab: one opened from a page of the same site shares that page's renderer, where a tab
    opened by the browser starts one of its own (about 0.3 s of Chromium a test on a 2-core machine under load)."""
    tab = tabs.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(f"{server}/v1/model")
    yield tab
    tab.close()


def open_tab(opener: Page, url: str = "about:blank") -> Page:
    """A new tab of ``opener``'s context at ``url``, opened from ``opener`` by window.open, once its load event has
    passed: in ``opener``'s renderer while it shows a page of that site (about:blank is of the opener's origin), so a
    test that runs a service of its own (another port of the same site) opens its page there with ``goto``, after
    setting what it needs first (routes, listeners). Its sessionStorage starts as a copy of the opener's, which
    ``opener`` keeps empty."""
    with opener.context.expect_page() as opening:
        opener.evaluate("(url) => { window.open(url); }", url)  # the window itself does not cross to Python
    tab = opening.value
    tab.set_default_timeout(TIMEOUT_MS)
    tab.wait_for_load_state()
    return tab


@contextmanager
def tab_at(opener: Page, url: str) -> Iterator[Page]:
    """The page at ``url`` (a service of the test's own) in a new tab from ``opener``, closed after; a script error on
    it fails the test."""
    with loaded(open_tab(opener), url) as page:
        try:
            yield page
        finally:
            page.close()


OpenerFor = Callable[[dict[str, object]], Page]  # a device's context options -> the opener of its tabs


@pytest.fixture(scope="module")
def device_opener(browser: Browser, opener: Page, server: str) -> Iterator[OpenerFor]:
    """``opener`` for a device's context options (PHONE, TABLET: a touch screen, its size), in a context of the
    device's own made at its first test in the module; ``opener`` itself for none (the 1280 x 1000 screen)."""
    made: dict[str, Page] = {}

    def opener_for(device: dict[str, object]) -> Page:
        if not device:
            return opener
        key = json.dumps(device, sort_keys=True)
        if key not in made:
            tab = browser.new_context(**{**SCREEN, **device}).new_page()
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(f"{server}/v1/model")
            made[key] = tab
        return made[key]

    yield opener_for
    for tab in made.values():
        tab.context.close()


@pytest.fixture
def own_page(browser: Browser, server: str) -> Iterator[Page]:
    """The page in a context of its own, for a test that changes the context itself (its clock)."""
    with opened_page(browser, server) as opened:
        yield opened


@pytest.fixture
def page(tabs: BrowserContext, opener: Page, server: str) -> Iterator[Page]:
    """The page loaded in a tab of its own (opened from ``opener``), closed after; a script error in the context
    while it is open, or what it left beyond the tab, fails the test."""
    errors: list[str] = []

    def failed(error: WebError) -> None:
        errors.append(str(error.error))

    tabs.on("weberror", failed)  # from the tab's first script on
    tab = None
    try:
        tab = open_tab(opener, server)
        card_shown(tab)
        yield tab
        kept = None if tab.is_closed() else tab.evaluate(KEPT)
    finally:
        if tab is not None:  # a failed test's too: its scripts would run on in the renderer the next tab shares
            tab.close()
        tabs.remove_listener("weberror", failed)
    cookies = tabs.cookies()  # one round trip to the browser a test, not two
    assert not errors, errors
    assert not cookies, f"the page left cookies in its context: {cookies}"
    assert not kept, f"the page left storage beyond its tab: {kept}"


# what a page keeps in its context beyond its tab: localStorage's keys and IndexedDB's databases (none on an origin
# without storage, such as about:blank)
KEPT = """async () => {
    try { return [...Object.keys(localStorage), ...(await indexedDB.databases()).map((d) => d.name)]; }
    catch (e) { if (e.name === 'SecurityError') return []; throw e; } }"""


def centre(page: Page) -> list[int]:
    """The RGB of the viewer's centre pixel (what the reader sees there)."""
    return page.evaluate("""() => { const c = document.getElementById('view');
        return Array.from(c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data.slice(0, 3)); }""")


# The films chosen so far, read: app.js reads each batch after the one before, in its promise ``uploads``, which the
# test awaits (at most TIMEOUT_MS, after which its own expect() fails as it would have) rather than leave expect() to
# find the reading: expect() looks again 0.1, 0.25, 0.5 and then 1 s apart, so a reading shown 0.4 s after the film
# was chosen was seen at 0.8 s.
READ = f"() => Promise.race([uploads.then(() => 0, () => 0), new Promise((done) => setTimeout(done, {TIMEOUT_MS}))])"


def chosen(page: Page, files: object) -> None:
    """``files`` chosen in the page's file picker (as ``set_input_files`` takes them), and read by the page: for a
    test whose requests the service answers (not held)."""
    page.set_input_files("#file", files)
    page.evaluate(READ)


def dropped(page: Page, data: bytes, name: str, mime: str) -> None:
    """A file dropped on the page (test_browser's ``drop_file``), and read by the page, as ``chosen``."""
    drop_file(page, data, name, mime)
    page.evaluate(READ)


def upload_one(page: Page, path: Path) -> None:
    chosen(page, path)
    expect(page.locator("#result")).to_be_visible()
    page.wait_for_function("() => /zoom/.test(document.getElementById('readout-wl').textContent)")


# The heatmap asked for drawn, or a refusal said: looked for at each frame (as wait_for_function does), not at
# expect()'s widening intervals; the test's expect() then says what it finds
HEATMAP_SETTLED = "() => !document.getElementById('legend').hidden || !document.getElementById('error').hidden"


def heatmap_asked(page: Page) -> None:
    """The heatmap button pressed, and its map drawn or refused (at most TIMEOUT_MS)."""
    page.click("#heatmap-button")
    with suppress(PlaywrightTimeoutError):
        page.wait_for_function(HEATMAP_SETTLED)


def drag(page: Page, dx: float, dy: float, shift: bool = False) -> None:
    """Drag from the film's centre, scrolled into view as a reader would (the mouse reaches no further)."""
    page.locator("#view").evaluate("e => e.scrollIntoView({block: 'center'})")
    box = page.locator("#view").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    if shift:
        page.keyboard.down("Shift")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=4)
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")


def test_window_level_invert_zoom_pan(page: Page, small: Path) -> None:
    upload_one(page, small)
    before = centre(page)
    assert before[0] == before[1] == before[2]  # gray: no heatmap drawn
    drag(page, 0, 60)  # down: the level drops, the film brightens
    after = centre(page)
    assert int(page.input_value("#level")) == 128 - 60 and after[0] > before[0], (before, after)
    assert page.input_value("#preset") == "custom"
    drag(page, -100, 0)  # left: a narrower window, more contrast
    assert int(page.input_value("#width")) == 255 - 100

    page.select_option("#preset", "default")
    plain = centre(page)
    page.check("#invert")
    inverted = centre(page)
    assert abs(inverted[0] + plain[0] - 255) <= 1, (plain, inverted)
    page.select_option("#preset", "bone")
    assert (page.input_value("#level"), page.input_value("#width")) == ("190", "110")
    page.uncheck("#invert")

    page.locator("#view").hover()
    page.mouse.wheel(0, -300)
    expect(page.locator("#readout-wl")).to_contain_text("zoom 1.10x")
    page.click("#zoom-in")
    expect(page.locator("#readout-wl")).to_contain_text("zoom 1.38x")
    level = page.input_value("#level")
    shown = "() => document.getElementById('view').toDataURL()"
    still = page.evaluate(shown)
    drag(page, 150, 100, shift=True)  # pan: the film moves, the window stays
    assert page.input_value("#level") == level and page.evaluate(shown) != still
    assert page.evaluate("() => [view.panX, view.panY]") == pytest.approx([150 * 700 / 700, 100 * 700 / 700], rel=0.05)
    # Fit fits the film and keeps the window it was read at; Default window puts the default back, and the zoom stays
    page.get_by_role("button", name="Fit", exact=True).click()
    expect(page.locator("#readout-wl")).to_have_text("level 190, width 110, zoom 1.00x")
    page.click("#zoom-in")
    page.get_by_role("button", name="Default window").click()
    expect(page.locator("#readout-wl")).to_have_text("level 128, width 255, zoom 1.25x")
    assert page.input_value("#preset") == "default"


def test_heatmap_only_on_request_in_viridis_and_printed(page: Page, full_size: Path, tiny_bundle: Path) -> None:
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.split("/v1/predict", 1)[1]) if "/v1/predict" in r.url else None)
    upload_one(page, full_size)
    assert calls == [""], calls  # the reading alone: no Grad-CAM computed
    expect(page.locator("#legend")).to_be_hidden()
    expect(page.locator("#heatmap-toggle")).to_be_disabled()
    gray = centre(page)
    heatmap_asked(page)
    expect(page.locator("#legend")).to_be_visible()
    assert calls == ["", "?heatmap=map"], calls
    assert centre(page) != gray
    # what the map is: a legend of "low ... high" alone let a bright spot on a film read NORMAL look like a finding
    legend = page.locator("#legend")
    for words in ("evidence for PNEUMONIA", "Grad-CAM", "where the model looked, not where disease is",
                  "scaled to this film's maximum"):
        expect(legend).to_contain_text(words)
    expect(page.locator("#legend-top")).to_have_text("this film's maximum")
    # the overlay's caption for this bundle (its maps on no scale of its own), in the same words
    assert_legend_is_the_caption(page.inner_text("#legend-text"),
                                 caption("PNEUMONIA", heatmap_scale(load_card(tiny_bundle))))
    negative = sentence(NEGATIVE.format(label="NORMAL", explains="PNEUMONIA"))
    if page.inner_text("#label") == "NORMAL":
        expect(legend).to_contain_text(negative)
    else:
        expect(legend).not_to_contain_text("Read as")
    assert page.evaluate("() => legendText({label: 'NORMAL', positive: 'PNEUMONIA'})").endswith(negative)
    expect(page.locator("#view")).to_have_accessible_description(re.compile(
        "yellow at this film's strongest value.*evidence for PNEUMONIA"))
    # and said once in the polite region as it appears: the legend's caveat was never announced
    expect(page.locator("#status")).to_have_text(f"Heatmap shown: {page.inner_text('#legend-text')}")
    expect(page.locator("#status")).to_contain_text("where the model looked, not where disease is")
    page.locator("#opacity").fill("100")  # the map alone: every pixel is a viridis colour, never jet's
    lut = np.array(page.evaluate("() => Array.from(VIRIDIS)")).reshape(256, 3)
    pixels = np.array(page.evaluate("""() => { const c = document.getElementById('view');
        return Array.from(c.getContext('2d').getImageData(c.width / 2 - 20, c.height / 2 - 20, 40, 40).data); }"""))
    rgb = pixels.reshape(-1, 4)[:, :3]
    nearest = np.abs(rgb[:, None, :] - lut[None]).sum(axis=2).min(axis=1)
    assert nearest.max() <= 6, nearest.max()
    page.locator("#opacity").fill("45")

    # the print view: the reading, the film with its heatmap and legend, the intended use and the disclaimer
    page.emulate_media(media="print")
    for hidden in ("#drop", ".toolbar >> nth=0", "#list", ".card", "#print"):
        expect(page.locator(hidden)).to_be_hidden()
    for shown in ("#label", "#view", "#legend", "#disclaimer", "#print-intended"):
        expect(page.locator(shown)).to_be_visible()
    expect(page.locator("#print-intended")).to_contain_text("aged 1 to 5")
    expect(page.locator("#disclaimer")).to_contain_text("Not a diagnosis")
    readout, disclaimer = page.locator(".readout").bounding_box(), page.locator("#disclaimer").bounding_box()
    assert disclaimer["x"] > readout["x"] and abs(disclaimer["y"] - readout["y"]) < 50  # beside the result
    page.emulate_media(media="screen")

    page.uncheck("#heatmap-toggle")
    assert centre(page) == gray and page.locator("#legend").is_hidden()
    assert len(calls) == 2  # toggling, opacity and printing are drawn here, not asked of the server


def test_no_heatmap_while_the_model_card_has_not_loaded(opener: Page, server: str, small: Path) -> None:
    """The legend's words are the service's (/v1/model's heatmap_caption): while the card has not loaded (here the
    network drops its request), the page computes no map whose scale it cannot name, says why, and keeps the
    reading, coloured as no clear call (the card would say whether the model checks a film's content)."""
    page = open_tab(opener)
    try:
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "heatmap" in r.url else None)
        page.route("**/v1/model", lambda route: route.abort())
        page.goto(server)
        expect(page.locator("#error")).to_contain_text("Could not load the model card")
        chosen(page, small)
        expect(page.locator("#label")).not_to_be_empty()
        # nothing says whether the model checks a film's content (this one does not): no clear call's colour
        expect(page.locator("#label")).to_have_class("indeterminate")
        page.click("#heatmap-button")
        expect(page.locator("#error")).to_have_text(
            "Heatmap not computed: the model card has not loaded, so the page cannot say which scale the map is on; "
            "enter the API key if the service asks for one, or reload the page")
        expect(page.locator("#result")).to_be_visible()
        expect(page.locator("#legend")).to_be_hidden()
        assert asked == []
    finally:
        page.close()


def test_films_list_sort_csv_and_dicom_panel(page: Page, data_root: Path, tagged_dicom: bytes, tiny_bundle: Path,
                                            tmp_path: Path) -> None:
    paths = (sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[:2]
             + sorted((data_root / "train" / "PNEUMONIA").glob("*.jpeg"))[:1])
    files = [{"name": p.name, "mimeType": "image/jpeg", "buffer": p.read_bytes()} for p in paths]
    files[0]["name"] = "=cmd.jpeg"  # a spreadsheet would run it as a formula
    chosen(page, files=files)
    expect(page.locator("#status")).to_have_text("3 films: 3 read, 0 rejected.")
    expect(page.locator("#error")).to_be_hidden()
    dropped(page, tagged_dicom, "scan.dcm", "application/dicom")
    expect(page.locator("#films tbody tr")).to_have_count(4)
    expect(page.locator("#film")).to_contain_text("4 years")
    for fact in ("Sex", "F", "PA", "DX", "2024-01-05", "1.2.3.4"):
        expect(page.locator("#film")).to_contain_text(fact)
    expect(page.locator("#result")).not_to_contain_text("Doe")
    assert centre(page) != [0, 0, 0]  # the decoded DICOM is on the canvas

    page.get_by_role("button", name="Probability").click()
    # the class whose probability the cells give, named once in the title: all four readings are of one model
    expect(page.locator("th[aria-sort=ascending]")).to_have_text("Probability of PNEUMONIA")
    shown = [float(t) for t in page.locator("#films tbody td:nth-child(3)").all_inner_texts()]
    assert shown == sorted(shown) and len(shown) == 4
    page.get_by_role("button", name="Probability").click()
    shown = [float(t) for t in page.locator("#films tbody td:nth-child(3)").all_inner_texts()]
    assert shown == sorted(shown, reverse=True)

    with page.expect_download() as download:
        page.click("#export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [float(r["probability"]) for r in rows] == pytest.approx(shown, abs=1e-3)
    assert [r["positive"] for r in rows] == ["PNEUMONIA"] * 4
    names = page.locator("#films tbody td:nth-child(1)").all_inner_texts()
    assert [r["path"] for r in rows] == [("'" + n if n.startswith("=") else n) for n in names]
    labels = page.locator("#films tbody td:nth-child(2)").all_inner_texts()
    assert [r["reading"] for r in rows] == labels
    # predict's columns, under its names, with its values: the page's CSV had no model_version, near_threshold,
    # in_scope, series or SOP instance UID (a row linked to a study, not to its film), and named model_id "model"
    (tmp_path / "scan.dcm").write_bytes(tagged_dicom)
    read = predict_paths(tiny_bundle, [tmp_path / "scan.dcm"])
    predicted = next(csv.DictReader(io.StringIO(format_results(read, "csv"))))
    exported = next(r for r in rows if r["path"] == "scan.dcm")
    assert set(predicted) <= set(exported), set(predicted) - set(exported)
    assert exported["study_instance_uid"] == "1.2.3.4" and exported["sop_instance_uid"]
    for column, value in predicted.items():
        if column == "path":
            assert exported[column] == "scan.dcm"
        elif column in ("probability", "threshold"):
            assert float(exported[column]) == pytest.approx(float(value), abs=SCORE_TOL), column
        else:
            assert exported[column] == value, column
    # no more of the patient than the film panel shows: no name, no id (the file carried both)
    text = Path(download.value.path()).read_text()
    assert "Doe" not in text and "MRN-4471" not in text
    # a two-class model's probability says it all: no class columns, no class line (a three-class one: below)
    assert not [k for k in rows[0] if k.startswith("probability_")] and page.locator("#classes").is_hidden()

    # the first film again, from the list
    page.get_by_role("button", name=f"show {paths[1].name}").click()
    expect(page.locator("#film-title")).to_have_text(f"Film: {paths[1].name}")
    # a screen reader hears which film the reading is of: moving between a batch's films, it heard readings of none
    expect(page.locator("#status")).to_have_text(re.compile(rf"^Film: {re.escape(paths[1].name)}\. Reading: "))


def test_the_csvs_name_says_the_time_in_utc_so_the_hour_the_clocks_go_back_sorts(browser: Browser, server: str,
                                                                                 small: Path) -> None:
    """The CSV was named by the reader's local clock without its offset: in London on 25 October 2026, a list saved
    at 01:30 BST and one saved 45 minutes later, at 01:15 GMT, were named 01-30-00 and 01-15-00 and sorted the wrong
    way, and two sites' files could not be put in one order. Named in UTC with a Z, they sort as saved, anywhere."""
    info = httpx.get(f"{server}/v1/model").json()
    version = re.sub(r"[^\w.-]+", "-", f"{info['id']} {info['version']}")  # as the page names the model
    with opened_page(browser, server, timezone_id="Europe/London") as page:
        upload_one(page, small)
        names = []
        for instant in ("2026-10-25T00:30:00Z", "2026-10-25T01:15:00Z"):  # 01:30 BST, then 01:15 GMT
            page.clock.set_fixed_time(instant)
            with page.expect_download() as download:
                page.click("#export")
            names.append(download.value.suggested_filename)
    assert names == [f"pneumoscan-readings_2026-10-25_00-30-00Z_{version}.csv",
                     f"pneumoscan-readings_2026-10-25_01-15-00Z_{version}.csv"]
    assert sorted(names) == names


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def luminance(colour: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", colour)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_every_control_is_named_and_keyboard_operable(page: Page, small: Path) -> None:
    # from the page's start, the film is chosen with the keyboard alone: Tab to the file button (past the key's field),
    # seen focused, and Space opens the picker (answered from the start: Playwright turns its interception on without
    # waiting, and a key pressed with the waiter opened the headless browser's own picker, which nothing answers)
    page.on("filechooser", lambda chooser: chooser.set_files(small))
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#file")).to_be_focused()
    ring = page.evaluate("""() => { const e = document.activeElement, s = getComputedStyle(e);
        return [e.matches(':focus-visible'), s.outlineStyle, parseFloat(s.outlineWidth)]; }""")
    assert ring[0] and ring[1] == "solid" and ring[2] >= 2, ring
    page.keyboard.press("Space")
    expect(page.locator("#result")).to_be_visible()
    page.wait_for_function("() => /zoom/.test(document.getElementById('readout-wl').textContent)")
    # the reading is said in the polite live region: a screen reader heard "Analysing..." and then nothing; with the
    # model's caveats counted (the tiny bundle's threshold is a guess), which the eye sees in the card beside it and a
    # screen reader did not hear of
    label, bar = page.inner_text("#label"), page.locator("#bar")
    expect(page.locator("#status")).to_have_text(re.compile(
        rf"^Film: {re.escape(small.name)}\. Reading: {label}, probability [01]\.\d{{3}}, threshold [01]\.\d{{3}}, "
        r"[1-9] scope warnings?\. "
        r"The model card gives 1 caveat\.$"))
    expect(page.locator("#card dt", has_text=re.compile("^Caveat$"))).to_have_count(1)
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert bar.get_attribute("aria-valuetext").split(": probability ")[1] in page.inner_text("#status")
    # the film shown again from the list (or the same file chosen twice) is said again: its words were the region's
    # already, and a screen reader said nothing
    said = page.text_content("#status")
    page.get_by_role("button", name=f"show {small.name}").click()
    assert page.text_content("#status") != said, "a reading shown again left the live region as it was: unsaid"
    expect(page.locator("#status")).to_have_text(said)
    # the threshold mark stands out at 3:1 (WCAG 1.4.11) on either fill (the dark mark on red was 2.31:1), and on
    # the empty bar: its white outline against the fills, its dark core against the empty bar
    mark = page.evaluate("""() => { const s = getComputedStyle(document.getElementById('bar-threshold'));
        return [s.backgroundColor, s.boxShadow]; }""")
    outline = re.match(r"rgb\(\d+, \d+, \d+\)", mark[1]).group(0)
    fills = page.evaluate("""() => ['fill', 'fill positive', 'fill negative', 'fill out-of-scope',
        'fill indeterminate'].map((name) => {
        const e = document.createElement('div'); e.className = name; document.body.append(e);
        const colour = getComputedStyle(e).backgroundColor; e.remove(); return colour; })""")
    track = page.evaluate("() => getComputedStyle(document.getElementById('bar')).backgroundColor")
    assert all(contrast(outline, fill) >= 3 for fill in fills), (mark, fills)
    assert contrast(mark[0], track) >= 3, (mark, track)
    # the empty track itself was 1.23:1 against the panel: its border marks where the bar ends (1.4.11)
    border, panel = page.evaluate("""() => [getComputedStyle(document.getElementById('bar')),
        getComputedStyle(document.getElementById('result'))].map((s, i) => i ? s.backgroundColor
        : [s.borderTopWidth, s.borderTopStyle, s.borderTopColor])""")
    assert border[0] == "1px" and border[1] == "solid" and contrast(border[2], panel) >= 3, (border, panel)
    # the file control's name starts with the words it shows ("Choose Files"), so a speech command finds it (2.5.3)
    expect(page.get_by_role("button", name=re.compile(r"^Choose Files\b"))).to_have_count(1)
    # every landmark is told apart by its name: the work area and the list were "films" and "Films"
    expect(page.get_by_role("region", name="films")).to_have_count(1)
    names = page.evaluate("""() => [...document.querySelectorAll('section[aria-label], section[aria-labelledby]')]
        .map((e) => (e.getAttribute('aria-label') || document.getElementById(e.getAttribute('aria-labelledby'))
        .textContent).trim().toLowerCase())""")
    assert len(names) == len(set(names)) >= 2, names
    named = [("textbox", "API key"), ("button", "Choose Files: chest X-rays"), ("region", "Upload and reading"),
             ("combobox", "window preset"), ("checkbox", "Lock window"),
             ("slider", "window level"), ("slider", "window width"), ("checkbox", "Invert"),
             ("button", "zoom in"), ("button", "zoom out"), ("button", "Fit"),
             ("button", "Default window"),
             ("button", "pan mode"), ("button", "Compute Grad-CAM heatmap"), ("checkbox", "Show heatmap"),
             ("slider", "heatmap opacity"), ("button", "Print this reading"), ("button", "Export list as CSV"),
             ("application", "X-ray viewer"), ("meter", "probability"), ("group", "heatmap")]
    for role, name in named:
        expect(page.get_by_role(role, name=name)).to_have_count(1)
    # what Lock window does was a tooltip (title) alone, which a keyboard never shows: it is text on the page,
    # seen beside the box as it is reached and heard as its description
    lock = page.get_by_role("checkbox", name="Lock window")
    lock.focus()
    hint = page.locator("#lock-hint")
    expect(hint).to_be_visible()
    expect(hint).to_contain_text("for the next films")
    expect(lock).to_have_accessible_description(hint.inner_text())
    tree = page.locator("body").aria_snapshot()
    unnamed = [line for line in tree.splitlines()
               if re.match(r"\s*- (button|checkbox|slider|combobox|textbox|img|application)\s*(\[.*\])?:?$", line)]
    assert not unnamed, unnamed
    # the reading's colour has words beside it: the label is text, the bar has a value text
    assert page.get_attribute("#bar", "aria-valuetext").startswith(page.inner_text("#label"))

    page.focus("#view")
    before = centre(page)
    page.keyboard.press("i")
    assert page.is_checked("#invert") and centre(page) != before
    page.keyboard.press("ArrowDown")
    assert page.input_value("#level") == "120"
    page.keyboard.press("+")
    expect(page.locator("#readout-wl")).to_contain_text("zoom 1.25x")
    page.keyboard.press("0")  # the film fitted, the window kept
    expect(page.locator("#readout-wl")).to_have_text("level 120, width 255, inverted, zoom 1.00x")
    # the browser's own zoom keys (a low-vision reader's 200 %) are the browser's: the viewer took Ctrl + and Ctrl 0
    # as its zoom and reset, and kept them from the browser
    page.evaluate("() => document.addEventListener('keydown', (e) => { window.kept = e.defaultPrevented; })")
    for keys in ("Control+=", "Control+-", "Control+0", "Alt+i", "Alt+h"):
        page.keyboard.press(keys)
        assert page.evaluate("() => window.kept") is False, keys
    expect(page.locator("#readout-wl")).to_have_text("level 120, width 255, inverted, zoom 1.00x")
    page.keyboard.press("+")
    page.keyboard.press("w")  # the default window back, the zoom kept
    expect(page.locator("#readout-wl")).to_have_text("level 128, width 255, zoom 1.25x")
    assert not page.is_checked("#invert")
    page.focus("#heatmap-button")
    page.keyboard.press("Enter")
    expect(page.locator("#heatmap-toggle")).to_be_enabled()
    # the button disables itself: focus went to the page's start (BODY), a keyboard user had to start again
    expect(page.locator("#heatmap-toggle")).to_be_focused()
    page.focus("#opacity")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#opacity") == "50"


def test_the_viewer_says_what_it_is_and_its_keys_and_is_worked_by_them_alone(own_page: Page, small: Path) -> None:
    """A screen reader met the viewer as an image (role img), whose arrow keys its browse mode keeps for itself, its
    keys only in a long name; the zoom was said in a live readout of every window step and pointer move; the heatmap
    was shown or hidden only at its checkbox, away from the film. The viewer is an application (no widget role
    fits a film's window and pan in two dimensions each), named, described by the keys the page shows under it and by
    what is drawn; what a key does is said once the keys stop, and h shows or hides the heatmap."""
    page = own_page  # its clock is its context's
    upload_one(page, small)
    # what a key did is said 50 ms after the keys stop, where 400: 4 s of this test's waits (a held key's 33 ms
    # repeats, below on the page's clock, still fall within it)
    page.evaluate("() => { sayAfterMs = 50; }")
    viewer, said = page.locator("#view"), page.locator("#view-said")
    expect(page.get_by_role("application", name="X-ray viewer")).to_have_count(1)
    assert viewer.get_attribute("aria-roledescription") == "film viewer"
    keys = page.inner_text("#view-keys")  # the help on screen is what a screen reader hears on reaching the viewer
    for words in ("arrow keys", "Shift", "Pan", "+ and -", "0 ", "w ", "i ", "h ", "Ctrl, Alt or Cmd"):
        assert words in keys, words
    expect(viewer).to_have_accessible_description(f"{keys} The film alone.")
    # a keyboard reader tabs to it from the heatmap's button, the control before it
    page.focus("#heatmap-button")
    page.keyboard.press("Tab")
    expect(viewer).to_be_focused()
    assert said.get_attribute("aria-live") == "polite" and page.get_attribute("#readout-wl", "aria-live") is None
    page.keyboard.press("+")
    expect(said).to_have_text("zoom 1.25x")
    page.keyboard.press("ArrowDown")
    expect(said).to_have_text("level 120, width 255")
    page.keyboard.press("Shift+ArrowRight")
    assert page.evaluate("() => [view.panX, view.panY]") == [-32, 0]
    page.click("#pan-mode")  # pressed, the arrows pan without Shift held (one key at a time), as a drag pans
    viewer.focus()
    page.keyboard.press("ArrowDown")
    assert page.evaluate("() => [view.panX, view.panY]") == [-32, -32] and page.input_value("#level") == "120"
    page.keyboard.press("0")
    expect(said).to_have_text("zoom 1.00x, film centred")
    assert page.evaluate("() => [view.zoom, view.panX, view.panY]") == [1, 0, 0] and page.input_value("#level") == "120"
    page.keyboard.press("w")
    expect(said).to_have_text("Default window: level 128, width 255, not inverted.")
    # a held key repeats some 30 times a second: its steps are said once, when it stops, not queued one by one (on the
    # page's clock, stopped here and moved on by hand, so a slow machine cannot space them further)
    page.evaluate("""() => { window.changes = 0;
        new MutationObserver((records) => { window.changes += records.length; }).observe(
            document.getElementById('view-said'), {childList: true, characterData: true, subtree: true}); }""")
    page.clock.install()
    page.clock.pause_at(page.evaluate("() => Date.now()") + 1000)
    for _ in range(6):
        page.keyboard.press("+")
        page.clock.run_for(33)
    drag(page, 0, 40)  # seen as it is dragged: not said
    page.clock.run_for(1000)
    expect(said).to_have_text("zoom 3.81x")
    assert page.evaluate("() => window.changes") == 1
    page.clock.resume()

    page.keyboard.press("h")
    expect(said).to_have_text("No heatmap computed yet: use Compute Grad-CAM heatmap.")
    page.click("#heatmap-button")
    expect(page.get_by_role("checkbox", name="Show heatmap", checked=True)).to_be_enabled()
    viewer.focus()
    page.keyboard.press("h")
    expect(page.get_by_role("checkbox", name="Show heatmap", checked=False)).to_have_count(1)
    expect(said).to_have_text("heatmap hidden")
    expect(viewer).to_have_accessible_description(f"{keys} The film alone.")
    page.keyboard.press("h")
    expect(said).to_have_text("heatmap shown")
    expect(page.locator("#legend")).to_be_visible()
    expect(viewer).to_have_accessible_description(re.compile(
        re.escape(keys) + r" Grad-CAM heatmap shown over the film in viridis, .*evidence for PNEUMONIA"))
    # the end of the zoom is said, and said again at each key past it; Tab leaves the viewer (no keyboard trap)
    for key in ("0", *"-" * 7):  # from 1: 0.80, 0.64, 0.51, 0.41, 0.33, 0.26, then no less than 0.25
        page.keyboard.press(key)
    expect(said).to_have_text("zoom 0.25x, the furthest out")
    before = said.text_content()
    page.keyboard.press("-")
    page.wait_for_function("(before) => document.getElementById('view-said').textContent !== before", arg=before)
    page.keyboard.press("Tab")
    expect(viewer).not_to_be_focused()


def test_on_a_small_window_escape_leaves_the_viewer_and_the_arrows_scroll_the_page(page: Page, small: Path) -> None:
    """At 683 x 384 CSS pixels (a 1366 x 768 laptop at 200 %) the page is taller than the window, and while the
    viewer had focus the arrow keys changed the window, never scrolled the page. Escape leaves it for the keys above
    it, which say so; there the arrows scroll the page, and Tab goes back to the viewer with its keys as they were."""
    upload_one(page, small)
    page.set_viewport_size({"width": 683, "height": 384})
    viewer, keys = page.locator("#view"), page.locator("#view-keys")
    expect(keys).to_contain_text("Escape leaves the viewer")
    viewer.focus()
    top = page.evaluate("() => scrollY")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#level") == "120" and page.evaluate("() => scrollY") == top  # the viewer's key
    page.keyboard.press("Escape")
    expect(keys).to_be_focused()
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")
    top = page.evaluate("() => scrollY")  # the keys scrolled into view
    page.keyboard.press("ArrowDown")
    page.wait_for_function("(top) => scrollY > top", arg=top)
    assert page.input_value("#level") == "120"
    page.keyboard.press("Tab")
    expect(viewer).to_be_focused()
    page.keyboard.press("ArrowDown")
    assert page.input_value("#level") == "112"


def test_the_viewer_fits_a_small_window(page: Page, small: Path) -> None:
    """At 683 x 384 CSS pixels (a 1366 x 768 laptop at 200 %) the viewer was 446 px tall: no scroll showed the whole
    film. It is sized to the window, in the film's proportions; a large window keeps the full viewer."""
    upload_one(page, small)
    viewer = page.locator("#view")
    page.set_viewport_size({"width": 683, "height": 384})
    viewer.evaluate("e => e.scrollIntoView({block: 'start'})")
    box = viewer.bounding_box()
    assert box["y"] >= -1 and box["y"] + box["height"] <= 385, box  # the film's full height (to a scroll's rounding)
    assert box["width"] / box["height"] == pytest.approx(700 / 520, rel=0.02)  # not squeezed
    page.set_viewport_size({"width": 1280, "height": 800})
    assert viewer.bounding_box()["width"] == pytest.approx(700, abs=1)


def test_the_toolbar_keeps_its_groups(page: Page, small: Path) -> None:
    """Once Lock window's words stood beside its box the toolbar wrapped between "+" and "-" (at 1024 and 683 px wide
    here; at 1280 with other fonts): the zoom buttons keep one line, the words stay beside the box, and at 320 px no
    control runs past the reading's panel."""
    upload_one(page, small)
    for width in (1280, 1024, 683):
        page.set_viewport_size({"width": width, "height": 800})
        buttons = [page.locator(f"#{name}").bounding_box() for name in ("zoom-in", "zoom-out", "zoom-fit", "pan-mode")]
        assert len({round(b["y"]) for b in buttons}) == 1, (width, buttons)
        lock, hint = page.locator("#window-lock").bounding_box(), page.locator("#lock-hint").bounding_box()
        middle = [box["y"] + box["height"] / 2 for box in (lock, hint)]
        assert abs(middle[0] - middle[1]) < hint["height"], (width, lock, hint)
    page.set_viewport_size({"width": 320, "height": 640})
    page.wait_for_function("() => document.documentElement.clientWidth === 320")
    panel = page.locator("#result").bounding_box()
    outside = page.evaluate("""(right) => [...document.querySelectorAll('.toolbar *')]
        .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > right + 0.5)
        .map((e) => e.id || e.tagName)""", panel["x"] + panel["width"])
    assert not outside and page.evaluate("() => document.documentElement.scrollWidth") <= 320, outside


def test_each_state_of_the_page_passes_axe_and_high_contrast_keeps_the_bar(page: Page, small: Path) -> None:
    """axe-core finds nothing serious in the states a reader meets: the empty page, a batch with a refused film (the
    list of several, the reading kept), a two-stage reading with its heatmap, one near its threshold with the
    interval's band and key, a reading outside the model's scope under its notice, a single refused film, a film the
    busy service did not read; the model card with its caveat is on the page throughout. In a forced-colours
    (high-contrast) mode the bar's fill and threshold mark, backgrounds the mode paints over, were gone: the bar read
    as empty, a probability of none; the pressed Pan looked as the others, and the drop zone the same with a file
    dragged over it. The same refusal twice left the
    alert's text as it was, and a screen reader silent."""
    refused = {"name": "form.jpeg", "mimeType": "image/jpeg", "buffer": b"not a film"}
    assert serious_violations(page) == []
    chosen(page, files=[{"name": small.name, "mimeType": "image/jpeg", "buffer": small.read_bytes()},
                        refused])
    expect(page.locator("#error")).to_have_text("2 films: 1 read, 1 rejected: see the list.")
    expect(page.locator("#result")).to_be_visible()
    assert serious_violations(page) == []
    # the reading's second stage (the tiny bundle has none), over the threshold, then its heatmap
    page.evaluate("""() => { const film = films.find((f) => f.result);
        film.result = { ...film.result, probability: (1 + film.result.threshold) / 2, etiology: { task: 'etiology',
            label: 'virus', positive: 'virus', probability: 0.41, threshold: 0.4, near_threshold: true,
            in_scope: true, warnings: [] } };
        showResult(film); }""")
    heatmap_asked(page)
    expect(page.locator("#legend")).to_be_visible()
    expect(page.locator("#etiology")).to_be_visible()
    assert serious_violations(page) == []
    # nothing moves or fades (docs/reading.md): a reduced-motion setting has nothing to stop
    moving = page.evaluate("""() => [...document.querySelectorAll('*')].filter((e) => { const s = getComputedStyle(e);
        return s.animationName !== 'none' || s.transitionDuration.split(',').some((d) => parseFloat(d) > 0)
            || s.scrollBehavior === 'smooth'; }).map((e) => e.id || e.tagName)""")
    assert not moving, moving

    page.click("#pan-mode")
    page.emulate_media(forced_colors="active")
    page.locator("#bar").scroll_into_view_if_needed()  # the screenshot's clip is of the window
    bar, fill, mark = (page.locator(s).bounding_box() for s in ("#bar", "#bar-fill", "#bar-threshold"))
    shot = Image.open(io.BytesIO(page.screenshot(clip=bar))).convert("RGB")
    y = bar["height"] // 2
    seen = {name: "rgb{}".format(shot.getpixel((int(x), y))) for name, x in (
        ("fill", fill["width"] / 4), ("mark", mark["x"] + mark["width"] / 2 - bar["x"]),
        ("empty", (fill["width"] + bar["width"]) / 2))}
    assert contrast(seen["fill"], seen["empty"]) >= 3 and contrast(seen["mark"], seen["fill"]) >= 3, seen
    pressed, plain = (page.evaluate(f"() => getComputedStyle(document.getElementById('{i}')).backgroundColor")
                      for i in ("pan-mode", "zoom-fit"))
    assert pressed != plain, (pressed, plain)
    # a file dragged over the drop zone: its colours, the only cue, were painted over in the mode's own
    drop = page.locator("#drop")
    still = drop.screenshot()
    drop.dispatch_event("dragenter")
    alike = drop.screenshot() == still
    assert not alike, "in forced colours the drop zone looks the same with a file over it"
    drop.dispatch_event("dragleave")
    page.emulate_media(forced_colors="none")
    page.evaluate("""() => { thresholdInterval = [0.2, 0.8]; const film = films.find((f) => f.result);
        film.result = { ...film.result, near_threshold: true }; showResult(film); }""")
    expect(page.locator("#near")).to_be_visible()
    expect(page.locator("#bar-key")).to_be_visible()
    assert serious_violations(page) == []
    ct = dicom_bytes(read_gray(small).astype(np.uint16) * 16, **CT_TAGS)
    chosen(page, files=[{"name": "ct.dcm", "mimeType": "application/dicom", "buffer": ct}])
    expect(page.locator("#scope-notice")).to_be_visible()
    assert serious_violations(page) == []

    chosen(page, files=[refused])
    expect(page.locator("#error")).to_have_text(re.compile("^Rejected: "))
    assert serious_violations(page) == []
    # the same refusal again: the alert's text changed, or a screen reader said nothing; the eye sees no change
    said, size = page.text_content("#error"), page.locator("#error").bounding_box()
    page.set_input_files("#file", files=[refused])
    page.wait_for_function("() => films.length === 5 && films[4].status === 'rejected'")
    assert page.text_content("#error") != said, "the same refusal again left the alert's text as it was: unsaid"
    assert page.locator("#error").bounding_box() == size
    expect(page.locator("#error")).to_have_text(said)
    page.route("**/v1/predict*", lambda route: route.fulfill(status=503, json={"error": "the service is busy"}))
    chosen(page, small)
    expect(page.locator("#error")).to_have_text("Not read: the service is busy")
    assert serious_violations(page) == []


def test_figures_short_of_one_never_read_as_one(page: Page) -> None:
    """A probability or sensitivity of 0.9996 is not certainty: the page cuts it to 0.999, as the reports do; nor is
    a probability of 0.0004 none: it reads "< 0.001"."""
    shown = page.evaluate("() => [figure(0.9996), figure(1), figure(0.12345), figure(0.0004), figure(0), figure(null)]")
    assert shown == ["0.999", "1.000", "0.123", "< 0.001", "0.000", "n/a"]  # 0.0004 is not none


def test_a_16_bit_png_is_shown_as_the_model_reads_it(page: Page, small: Path, tmp_path: Path) -> None:
    """12-bit values in a 16-bit PNG (the usual DICOM-to-PNG export): the browser keeps their high byte (0 to 15,
    a black film); the page shows the service's decode instead, stretched from lowest to highest as the model
    reads it."""
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.split("/v1/predict", 1)[1]) if "/v1/predict" in r.url else None)
    path = tmp_path / "film16.png"
    Image.fromarray(read_gray(small).astype(np.uint16) * 16).save(path)
    assert Image.open(path).mode == "I;16"
    upload_one(page, path)
    assert calls == ["?image=true"]
    expect(page.locator("#caption")).to_have_text(f"Film {SERVICE_CAPTION}")
    assert page.evaluate("() => view.gray.reduce((a, b) => Math.max(a, b), 0)") > 200
    # what else the page reads from a film's first bytes: an alpha channel is the service's to lay on black, and
    # a PNG's magic bytes win over a .dcm name, as for the service
    kinds = page.evaluate("""async () => {
        const png = (depth, colour) => Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13,
            0x49, 0x48, 0x44, 0x52, 0, 0, 1, 0, 0, 0, 1, 0, depth, colour, 0, 0, 0]);
        const files = [[png(8, 0), "a.png"], [png(8, 4), "b.png"], [png(8, 6), "c.png"], [png(8, 0), "d.dcm"]];
        return Promise.all(files.map(([bytes, name]) => sniff(new File([bytes], name)))); }""")
    png = {"dicom": False, "format": "JPEG/PNG"}
    assert kinds == [{**png, "shown": True}, {**png, "shown": False}, {**png, "shown": False}, {**png, "shown": True}]


def test_two_stages_in_the_list_and_csv_and_a_refused_heatmap(opener: Page, tiny_bundle: Path,
                                                              tiny_etiology_bundle: Path, data_root: Path,
                                                              tmp_path: Path) -> None:
    """With an etiology stage the list and its CSV carry its reading (empty where it did not run). A heatmap the
    service refuses (its weights damaged on disk since start-up) is said beside the reading, which stays."""
    paths = [p for kind in ("NORMAL", "PNEUMONIA") for p in sorted((data_root / "train" / kind).glob("*.jpeg"))[:2]]
    predictor = Predictor(tiny_bundle)
    size = predictor.card.spec.decode_target
    probabilities = sorted(predictor.predict_array(read_gray(p, target=size))["probability"] for p in paths)
    assert probabilities[-1] - probabilities[0] > 1e-3
    bundle = with_threshold(tiny_bundle, (probabilities[0] + probabilities[-1]) / 2, tmp_path / "bundle")
    app = create_app(bundle, etiology=tiny_etiology_bundle, backend="onnx")
    weights = bytearray((bundle / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (bundle / "model.safetensors").write_bytes(bytes(weights))
    page = open_tab(opener)
    errors: list[str] = []
    try:
        with contextmanager(run_server)(app) as url:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            expect(page.locator("#card")).to_contain_text("bacteria / virus")
            chosen(page, paths)
            expect(page.locator("#status")).to_have_text("4 films: 4 read, 0 rejected.")
            expect(page.locator("#etiology-column")).to_have_text("Etiology")  # titled from its task
            rows = [r.locator("td").all_inner_texts() for r in page.locator("#films tbody tr").all()]
            assert {r[1] for r in rows} == {"NORMAL", "PNEUMONIA"}, rows
            for row in rows:
                assert (row[3] == "not run") == (row[1] == "NORMAL"), row
                second = r"(bacteria|virus) \(P\(virus\) = [01]\.\d{3}(, near the threshold)?\)"
                assert row[1] == "NORMAL" or re.fullmatch(second, row[3]), row
            with page.expect_download() as download:
                page.click("#export")
            exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            for line in exported:
                if line["reading"] == "NORMAL":
                    assert line["etiology"] == line["etiology_probability_virus"] == "", line
                else:
                    assert re.fullmatch(r"(bacteria|virus)( \(near the threshold\))?", line["etiology"]), line
                    assert line["etiology_label"] in ("bacteria", "virus"), line
                    assert 0 <= float(line["etiology_probability_virus"]) <= 1

            reading = page.locator("#label").inner_text()
            page.click("#heatmap-button")
            expect(page.locator("#error")).to_contain_text(
                "Heatmap not computed: heatmaps unavailable: the weights of the bundle on disk are no longer those")
            expect(page.locator("#result")).to_be_visible()
            assert page.locator("#label").inner_text() == reading and page.is_enabled("#heatmap-button")
    finally:
        page.close()
    assert not errors, errors


def test_a_service_without_heatmaps_offers_none(opener: Page, tiny_bundle: Path, small: Path) -> None:
    """A service started without heatmaps (serve --no-heatmaps, the onnx-int8 backend) says so in /v1/model, and
    refuses each heatmap with 422 (heatmap_unavailable); the page offered Compute Grad-CAM heatmap and said why only
    once it was refused. It offers no heatmap and says why beside the viewer's tools, as the h key does."""
    with contextmanager(run_server)(create_app(tiny_bundle, heatmaps=False)) as url, tab_at(opener, url) as page:
        upload_one(page, small)
        off = page.locator("#heatmap-off")
        expect(off).to_be_visible()
        expect(off).to_contain_text("This service draws no heatmaps")
        for control in ("#heatmap-button", "#heatmap-toggle", "#opacity"):
            expect(page.locator(control)).to_be_hidden()
        # the viewer's keys say what h does here (they said it shows or hides the heatmap)
        expect(page.locator("#view-keys")).to_contain_text("h says why this service draws no heatmaps.")
        expect(page.locator("#view-keys")).not_to_contain_text("shows or hides")
        page.evaluate("() => { sayAfterMs = 50; }")  # what a key did is said 50 ms after the keys stop, not 400
        page.locator("#view").focus()
        page.keyboard.press("h")
        expect(page.locator("#view-said")).to_contain_text("This service draws no heatmaps")
        assert page.locator("#view-layer").text_content() == "The film alone."
        assert serious_violations(page) == []


def test_a_second_stage_of_ones_own_is_titled_from_its_task(opener: Page, tiny_bundle: Path, small: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page titled every second stage "Etiology" (its line under the reading, the list's column) and named its CSV
    columns etiology_*: a site's stage telling typical from atypical pneumonia read as an etiology. Each is named from
    the stage's task, as predict's columns are (etiology's stay as they were: the test above)."""
    from tests.test_predict import make_bundle

    monkeypatch.setattr(tasks, "_TASKS", tasks._TASKS.copy())
    tasks.register_task("typicality", classes=("typical", "atypical"), positive="atypical",
                        follows={"pneumonia": "PNEUMONIA"})(len)
    second = make_bundle(tmp_path / "typicality", "typicality", ("typical", "atypical"), "atypical")
    first = with_threshold(tiny_bundle, 0.0, tmp_path / "first")  # every film is handed to the second stage
    page = open_tab(opener)
    try:
        with contextmanager(run_server)(create_app(first, etiology=second)) as url:
            page.goto(url)
            expect(page.locator("#card")).to_contain_text("typical / atypical")
            chosen(page, small)
            expect(page.locator("#etiology")).to_have_text(
                re.compile(r"^Typicality: (typical|atypical) \(P\(atypical\) = [01]\.\d{3}, threshold 0\.500\)$"))
            expect(page.locator("#etiology-column")).to_have_text("Typicality")
            with page.expect_download() as download:
                page.click("#export")
            exported = next(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    finally:
        page.close()
    assert exported["typicality"] in ("typical", "atypical") and exported["typicality_label"] == exported["typicality"]
    assert 0 <= float(exported["typicality_probability_atypical"]) <= 1
    assert float(exported["typicality_threshold"]) == 0.5
    assert not any(column.startswith("etiology") for column in exported)


def test_a_colour_file_is_shown_in_the_grey_the_model_reads(page: Page, small: Path, tmp_path: Path) -> None:
    """The page drew a colour file's red channel; the service reads Pillow's luma of all three."""
    gray = read_gray(small)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=-1)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, "RGB").save(path)
    upload_one(page, path)
    shown = np.array(page.evaluate("() => Array.from(view.gray)"), np.uint8).reshape(gray.shape)
    np.testing.assert_array_equal(shown, np.asarray(Image.open(path).convert("L")))


def test_the_card_gives_the_patients_beside_the_films(page: Page, tiny_bundle: Path) -> None:
    """One child's films are scored alike: where the card counts patients, the validation and evaluation rows name
    them beside the films (the tiny bundle's validation films are each one child's: its card counts films only)."""
    n = load_card(tiny_bundle).val_metrics["n"]
    expect(page.locator("#card")).to_contain_text(f"n = {n} films")
    assert page.evaluate("() => [filmsOf({n: 322, patients: {all: 172, positive: 108, negative: 64}}), "
                         "filmsOf({n: 40, patients: null})]") == ["322 films of 172 patients", "40 films"]


def test_the_card_says_of_each_recorded_threshold_and_evaluation_whether_its_films_were_checked(page: Page) -> None:
    """Thresholds chosen after training (`pneumoscan threshold`) were not on the page at all, so neither was that
    one was chosen on films not checked against the training films (it may then be too high). Each is a row, with
    the films_checked of /v1/model said as for an evaluation; a record older than the check says it is not recorded."""
    record = {"date": "2026-11-02", "policy": "sensitivity >= 0.95", "data": "site.csv", "n": 40, "n_positive": 20,
              "n_negative": 20, "previous_threshold": 0.5, "threshold": 0.25, "tta_threshold": 0.3,
              "sensitivity": 0.95, "specificity": 0.6}
    evaluation = {"date": "2026-11-01", "data": "other.csv", "n": 50, "threshold": 0.5, "metrics": {
        key: {"value": 0.8} for key in ("auc", "sensitivity", "specificity")}}
    checked = [True, False, None]
    rows = page.evaluate("""async ([records, evaluations]) => {
        const info = await (await fetch('/v1/model')).json();
        showCard({...info, threshold_records: records, external_evaluations: evaluations});
        const names = [...document.querySelectorAll('#card dt')].map((e) => e.textContent);
        return names.map((name, i) => [name, document.querySelectorAll('#card dd')[i].textContent])
            .filter(([name]) => name.startsWith('Threshold chosen') || name.startsWith('Evaluated')); }""",
                         [[{**record, "films_checked": c} for c in checked],
                          [{**evaluation, "films_checked": c} for c in checked]])
    unchecked = "; films not checked against its training films"
    unknown = "; whether its films were checked against its training films is not recorded"
    line = ("0.500 to 0.250 (sensitivity >= 0.95): sensitivity 0.950, specificity 0.600 on those films, n = 40 films "
            "(2026-11-02)")
    assert rows[3:] == [["Threshold chosen on site.csv", line + note] for note in ("", unchecked, unknown)]
    evaluated = "AUC 0.800, sensitivity 0.800, specificity 0.800 at threshold 0.500, n = 50 films (2026-11-01)"
    assert rows[:3] == [["Evaluated on other.csv", evaluated + note] for note in ("", unchecked, unknown)]


NOTICE = "Outside the model's scope: this reading does not apply"


def test_an_out_of_scope_film_is_marked_as_not_applying(page: Page, full_size: Path, tagged_dicom: bytes) -> None:
    """A CT slice was shown "Reading: PNEUMONIA" in bold red like any film, its reason a small bullet below the
    numbers, and listed and exported as a plain reading. Now the notice and its reasons come first, in grey, the
    label is greyed, and the list and CSV say "out of scope"; the probability stays for a reader who knows better.
    The model card's out-of-scope uses are shown beside its intended use."""
    card = page.locator(".card")
    expect(card).to_contain_text("Not for")
    items = page.locator("#out-of-scope-list li").all_inner_texts()
    assert len(items) >= 2 and any("Lateral films" in i for i in items), items  # /v1/model's out_of_scope
    # a bundle with no appearance record flags no film that is no chest film: the card says the check is off
    expect(page.locator("#card")).to_contain_text("Image content check")
    expect(page.locator("#card")).to_contain_text("off: this bundle records no appearance of its training films")
    dropped(page, dicom_bytes(read_gray(full_size).astype(np.uint16) * 16, **CT_TAGS), "ct.dcm", "application/dicom")
    notice = page.locator("#scope-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(NOTICE)
    expect(notice.locator("#warnings")).to_contain_text("Scope: Modality CT is not a radiograph")
    assert notice.bounding_box()["y"] < page.locator("#label").bounding_box()["y"]  # read before the label
    label = page.locator("#label").inner_text()
    # the notice and the reading are headings: a screen reader's heading keys went from the page's title to the film
    headings = page.get_by_role("heading", level=2).all_inner_texts()
    assert headings[:3] == [NOTICE, f"Reading: {label}", "Film: ct.dcm"], headings
    colours = page.evaluate("""() => ['label', 'bar-fill', 'scope-notice'].map(
        (id) => getComputedStyle(document.getElementById(id))[id === 'label' ? 'color' : 'backgroundColor'])""")
    for colour in colours:  # grey: neither a finding's red nor no finding's green
        r, g, b = map(int, re.findall(r"\d+", colour)[:3])
        assert max(r, g, b) - min(r, g, b) < 40, colours
    expect(page.locator("#probability")).to_contain_text("P(PNEUMONIA) = ")
    # announced without the label and probability (said aloud they sounded as if they applied), with its reasons as
    # the notice gives them: "2 scope warnings say why" left a screen reader to find why
    reasons = " ".join(f"{w}." for w in page.locator("#warnings li").all_inner_texts())
    assert "Modality CT is not a radiograph" in reasons
    expect(page.locator("#status")).to_have_text(
        f"Film: ct.dcm. Outside the model's scope: this reading does not apply. {reasons}")
    assert label not in page.inner_text("#status") and "probability" not in page.inner_text("#status")

    dropped(page, tagged_dicom, "chest.dcm", "application/dicom")
    expect(page.locator("#film-title")).to_have_text("Film: chest.dcm")
    expect(notice).to_be_hidden()
    assert page.get_by_role("heading", level=2).all_inner_texts()[:2] == [f"Reading: {page.inner_text('#label')}",
                                                                          "Film: chest.dcm"]
    # in scope, but the tiny bundle checks no film's content: a call, uncoloured (see the list's colour test)
    assert page.get_attribute("#label", "class") == "indeterminate"
    assert page.evaluate("() => !document.getElementById('scope-notice').contains(document.getElementById('warnings'))")

    cells = {r.locator("td").nth(0).inner_text(): r.locator("td").all_inner_texts()
             for r in page.locator("#films tbody tr").all()}
    assert cells["ct.dcm"][1] == f"out of scope ({label})" and float(cells["ct.dcm"][2]) >= 0
    ct_reading = page.locator("#films tbody tr", has_text="ct.dcm").locator("td").nth(1)
    assert ct_reading.get_attribute("class") == "out-of-scope"
    assert not cells["chest.dcm"][1].startswith("out of scope")
    with page.expect_download() as download:
        page.click("#export")
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))}
    assert rows["ct.dcm"]["reading"] == f"out of scope ({label})" and float(rows["ct.dcm"]["probability"]) >= 0
    assert rows["chest.dcm"]["reading"] in ("NORMAL", "PNEUMONIA")


def test_a_late_heatmap_leaves_the_page_of_another_film_alone(page: Page, small: Path) -> None:
    """A heatmap reply for a film no longer on screen erased the rejection shown since (no reading and no reason
    left on the page), and a failed one would have put "Heatmap not computed" above another film's reading."""
    held: list = []
    page.route(re.compile(r".*/v1/predict\?heatmap=map$"), lambda route: held.append(route))
    page.evaluate("""() => { const ask = post; window.replies = 0;
        post = async (...args) => { const body = await ask(...args); window.replies += 1; return body; }; }""")
    upload_one(page, small)
    page.click("#heatmap-button")
    page.wait_for_function("() => window.replies === 1")  # the reading; the heatmap request is held
    page.set_input_files("#file", files=[{"name": "empty.jpeg", "mimeType": "image/jpeg", "buffer": b""}])
    expect(page.locator("#error")).to_have_text("Rejected: the file is empty (0 bytes).")
    while not held:
        page.wait_for_timeout(50)
    held.pop().continue_()
    page.wait_for_function("() => window.replies === 2 && films[0].cam !== null")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_have_text("Rejected: the file is empty (0 bytes).")

    page.get_by_role("button", name=f"show {small.name}").click()  # its map came: shown with the film again
    expect(page.locator("#heatmap-toggle")).to_be_enabled()

    def read(n: int) -> None:
        page.set_input_files("#file", small)
        page.wait_for_function(f"() => films.length === {n} && current === films[{n - 1}]")

    read(3)  # the same film again, read anew: a new entry without a map
    page.click("#heatmap-button")
    while not held:
        page.wait_for_timeout(50)
    read(4)  # and another while its map is computed
    status = page.inner_text("#status")
    assert status.startswith(f"Film: {small.name}. Reading: ")
    held.pop().fulfill(status=503, json={"error": "the service is busy"})
    page.wait_for_function("() => window.replies === 5")
    expect(page.locator("#error")).to_be_hidden()
    assert page.inner_text("#status") == status and page.is_visible("#result")


def shown_as_the_service_decodes_it(page: Page, path: Path) -> None:
    """Upload ``path``: the page asks the service for its decode (one ``?image=true`` request), captions it so, and
    shows the grey levels the model read."""
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.split("/v1/predict", 1)[1]) if "/v1/predict" in r.url else None)
    upload_one(page, path)
    assert calls == ["?image=true"]
    expect(page.locator("#caption")).to_have_text(f"Film {SERVICE_CAPTION}")
    shown = np.array(page.evaluate("() => Array.from(view.gray)"), np.int16)
    assert np.abs(shown - np.asarray(Image.open(path), np.int16).ravel()).max() <= 1


def test_a_colour_managed_png_is_shown_as_the_service_decodes_it(page: Page, small: Path, tmp_path: Path) -> None:
    """A gAMA of 1.0 made Chromium draw a film 54 grey levels brighter than the model read it, with no caption;
    a PNG with colour management (iCCP, cHRM, a gAMA other than sRGB's 45455) is shown from the service's decode."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add(b"gAMA", (100_000).to_bytes(4, "big"))
    path = tmp_path / "gamma1.png"
    Image.open(small).convert("L").save(path, pnginfo=info)
    shown_as_the_service_decodes_it(page, path)
    kinds = page.evaluate("""async () => {
        const chunk = (type, data) => [0, 0, 0, data.length, ...Array.from(type, (c) => c.charCodeAt(0)), ...data,
            0, 0, 0, 0];
        const png = (...chunks) => new File([Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a,
            ...chunk("IHDR", [0, 0, 1, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0]), ...chunks.flat(), ...chunk("IDAT", [0])])],
            "f.png");
        const gamma = (g) => chunk("gAMA", [g >>> 24, (g >>> 16) & 255, (g >>> 8) & 255, g & 255]);
        const files = [png(), png(gamma(45455)), png(chunk("sRGB", [0]), gamma(45455)), png(gamma(70000)),
            png(chunk("iCCP", [0x61, 0, 0, 1, 2, 3])), png(chunk("cHRM", new Array(32).fill(1))),
            png(chunk("tEXt", [0x61, 0]), gamma(100000))];
        return (await Promise.all(files.map(sniff))).map((kind) => kind.shown); }""")
    assert kinds == [True, True, True, False, False, False, False]


def test_a_colour_managed_jpeg_is_shown_as_the_service_decodes_it(page: Page, small: Path, tmp_path: Path) -> None:
    """Chromium draws a JPEG through its ICC profile (val/NORMAL's films 11-19 grey levels off, a gamma-1.0 profile
    54 brighter) where the model reads the stored values: one with a profile (APP2 ICC_PROFILE), an Adobe YCCK
    transform or four components (CMYK) is shown from the service's decode, as a colour-managed PNG is."""
    from PIL import ImageCms

    path = tmp_path / "profiled.jpeg"
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(small).convert("L").save(path, quality=95, icc_profile=profile)
    shown_as_the_service_decodes_it(page, path)
    kinds = page.evaluate("""async () => {
        const segment = (marker, data) => [0xff, marker, (data.length + 2) >> 8, (data.length + 2) & 255, ...data];
        const text = (s) => Array.from(s, (c) => c.charCodeAt(0));
        const sof = (components) => segment(0xc0, [8, 0, 1, 0, 1, components, ...new Array(3 * components).fill(1)]);
        const jpeg = (...segments) => new File([Uint8Array.from([0xff, 0xd8, ...segments.flat(),
            ...segment(0xda, [1, 1, 0, 0, 63, 0]), 0, 0xff, 0xd9])], "f.jpeg");
        const adobe = (transform) => segment(0xee, [...text("Adobe"), 0, 100, 0, 0, 0, 0, transform]);
        const files = [jpeg(sof(1)), jpeg(segment(0xe0, [...text("JFIF"), 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]), sof(3)),
            jpeg(segment(0xe2, [...text("MPF"), 0, 1, 2]), sof(1)), jpeg(adobe(1), sof(3)),
            jpeg(segment(0xe2, [...text("ICC_PROFILE"), 0, 1, 1, 2, 3]), sof(1)), jpeg(adobe(2), sof(4)),
            jpeg(sof(4)), jpeg(0xff, segment(0xe2, [...text("ICC_PROFILE"), 0, 1, 1]), sof(1))];
        return (await Promise.all(files.map(sniff))).map((kind) => kind.shown); }""")
    assert kinds == [True, True, True, True, False, False, False, False]


def test_a_reading_near_the_threshold_is_said_so_with_the_interval(opener: Page, tiny_bundle: Path, small: Path,
                                                                    tmp_path: Path) -> None:
    """The bar shows the 95 % confidence interval of the threshold, and a reading inside that range
    says it could have been read either way (the list and its CSV too). The reading itself says so, in neither red
    nor green (a bold red PNEUMONIA inside the band looked as sure as a clear one, an amber line below its only
    qualifier), and so does its announcement; a key under the bar says in words what its mark and hatching are."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    save_card(bundle, dataclasses.replace(load_card(bundle), threshold_interval=[0.0, 1.0]))
    threshold = load_card(bundle).threshold
    server = run_server(create_app(bundle))
    url = next(server)
    try:
        page = open_tab(opener)
        page.goto(url)
        card_shown(page)
        chosen(page, small)
        expect(page.locator("#result")).to_be_visible()
        expect(page.locator("#near")).to_be_visible()
        expect(page.locator("#near")).to_have_text("Too close to the threshold to call: treat as indeterminate. The "
                                                   "threshold's 95 % confidence interval runs from 0.000 to 1.000.")
        expect(page.locator("#bar-band")).to_be_visible()
        label = page.evaluate("() => current.result.label")
        expect(page.locator("#label")).to_have_text(f"{label}, near the threshold: indeterminate")
        colours = page.evaluate("""() => [getComputedStyle(document.getElementById('label')).color,
            getComputedStyle(document.getElementById('label')).fontWeight,
            getComputedStyle(document.getElementById('bar-fill')).backgroundColor]""")
        for colour in (colours[0], colours[2]):  # neutral: neither a finding's red nor no finding's green
            r, g, b = map(int, re.findall(r"\d+", colour)[:3])
            assert max(r, g, b) - min(r, g, b) < 40, colours
        assert int(colours[1]) < 700, colours  # not bold as a clear reading is
        expect(page.locator("#status")).to_have_text(re.compile(
            rf"^Film: {re.escape(small.name)}\. Reading: {label}, near the threshold: indeterminate, probability "
            r"[01]\.\d{3}, threshold "))
        assert page.get_attribute("#bar", "aria-valuetext").startswith(page.inner_text("#label"))
        expect(page.locator("#films tbody td").nth(1)).to_have_text(f"{label} (near the threshold)")
        # the key: the mark and the hatching had their meaning only in tooltips
        expect(page.locator("#bar-key")).to_be_visible()
        expect(page.locator("#bar-key")).to_have_text(f"threshold {threshold:.3f}; hatched: the threshold's 95 % "
                                                      "confidence interval, 0.000 to 1.000")
        # without a band there is nothing to key: the threshold is in the numbers below the bar
        page.evaluate("() => { thresholdInterval = null; showResult(current); }")
        expect(page.locator("#bar-key")).to_be_hidden()
        expect(page.locator("#bar-band")).to_be_hidden()
        page.close()
    finally:
        server.close()


def test_the_list_colours_a_reading_as_the_panel_does(page: Page) -> None:
    """A reading near the threshold was uncoloured in the panel but bold red (or green) in the list, "PNEUMONIA (near
    the threshold)" looking as sure as a clear call: the list styles each reading as the panel does. A model that
    checks no film's content colours none of its calls: noise had read PNEUMONIA in bold red. Nor does an etiology
    model served alone: its bacteria, given for a normal film too, read as an all-clear in green."""
    shown = page.evaluate("""() => {
        // read by a model with the check (the tiny test bundle has none)
        const readWith = { contentChecked: true, followsAnother: false };
        const r = (label, inScope, near) => ({ label, positive: 'PNEUMONIA', in_scope: inScope, near_threshold: near,
            probability: 0.6, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {} });
        films.push(...[['clear', r('PNEUMONIA', true, false)], ['near', r('PNEUMONIA', true, true)],
            ['near normal', r('NORMAL', true, true)], ['lateral', r('PNEUMONIA', false, true)]]
            .map(([name, result]) => ({ name, result, status: 'done', readWith })));
        renderList();
        return [...document.querySelectorAll('#films tbody tr')].map((row) => {
            const cell = row.cells[1], style = getComputedStyle(cell);
            return [row.cells[0].textContent, cell.className, style.color, style.fontWeight]; });
    }""")
    looks = {name: (look, colour, weight) for name, look, colour, weight in shown}
    assert looks["clear"][0] == "positive" and int(looks["clear"][2]) == 700  # the panel's red
    assert looks["near"][0] == looks["near normal"][0] == "indeterminate" and looks["lateral"][0] == "out-of-scope"
    for name in ("near", "near normal", "lateral"):  # neither red nor green, not bold
        r, g, b = map(int, re.findall(r"\d+", looks[name][1])[:3])
        assert max(r, g, b) - min(r, g, b) < 40 and int(looks[name][2]) < 700, shown
    unchecked = page.evaluate("""() => { films[0].readWith = { contentChecked: false, followsAnother: false };
        renderList();
        return document.querySelector('#films tbody tr').cells[1].className; }""")
    assert unchecked == "indeterminate"  # the clear call, from a model without the content check
    second_alone = page.evaluate("""() => { films[0].readWith = { contentChecked: true, followsAnother: true };
        renderList();
        return document.querySelector('#films tbody tr').cells[1].className; }""")
    assert second_alone == "indeterminate"  # from an etiology model served alone


def test_the_page_reflows_on_a_phone(opener: Page, server: str, full_size: Path, tmp_path: Path) -> None:
    """At 375 and 320 px the page scrolled sideways after an upload (the films table held the column wide) and the
    reading was cut off at the right (WCAG 1.4.10): the column narrows, the table scrolls inside its panel."""
    page = open_tab(opener)
    try:
        page.set_viewport_size({"width": 375, "height": 812})
        page.goto(server)
        card_shown(page)
        long_name = tmp_path / "1.2.840.113619.2.55.3.604688119.971.1523541234.283.1.2.840.113619.2.55.3.jpeg"
        shutil.copy(full_size, long_name)  # a PACS export's name: it pushed the reading off screen
        upload_one(page, long_name)
        expect(page.locator("#list")).to_be_visible()
        heatmap_asked(page)  # its colour scale's row ran 18 px past a 320 px screen
        expect(page.locator("#legend")).to_be_visible()
        for width in (375, 320):
            page.set_viewport_size({"width": width, "height": 812})
            page.wait_for_function(f"() => document.documentElement.clientWidth === {width}")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width
            for selector in ("#result", ".readout", "#label", "#bar", "#list", "#drop", "#legend-top"):
                box = page.locator(selector).bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= width, (width, selector, box)
            # and nothing in the reading runs past its own box (a long file name in the film's title did)
            spilled = page.evaluate("""() => [...document.querySelectorAll('#result *')]
                .filter((e) => e.clientWidth && e.scrollWidth > e.clientWidth + 1).map((e) => e.id || e.tagName)""")
            assert not spilled, (width, spilled)
            # the list's reading and probability are in its panel's view, the name wrapped beside them
            panel = page.locator("#list").bounding_box()
            for cell in (2, 3):
                box = page.locator(f"#films tbody tr td:nth-child({cell})").bounding_box()
                assert box["x"] + box["width"] <= panel["x"] + panel["width"], (width, cell, box, panel)
            # nor is a word of the film panel cut where it fits on a line ("age, se" / "x, view" did)
            cut = page.evaluate("""() => [...document.querySelectorAll('#film dd')].flatMap((dd) => {
                const text = dd.firstChild;
                return [...text.data.matchAll(/[A-Za-z]+/g)].filter((m) => {
                    const range = document.createRange();
                    range.setStart(text, m.index);
                    range.setEnd(text, m.index + m[0].length);
                    return range.getClientRects().length > 1; }).map((m) => m[0]); })""")
            assert not cut, (width, cut)
    finally:
        page.close()


# A phone and a tablet as Chromium emulates them (Playwright's device options: Emulation.setDeviceMetricsOverride with
# mobile true, and its touch screen, Emulation.setTouchEmulationEnabled)
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
TABLET = {**PHONE, "viewport": {"width": 768, "height": 1024}, "device_scale_factor": 2}

# Each control a pointer aims at, with the size of what it hits: a checkbox, and the file input, anywhere on their
# label (its words, the drop zone), every other control on itself
TARGETS = """() => [...document.querySelectorAll('button, input, select, a[href]')]
    .filter((e) => e.getClientRects().length)
    .map((e) => { const hit = (['checkbox', 'file'].includes(e.type) && e.closest('label')) || e;
        const box = hit.getBoundingClientRect();
        return [e.id || e.getAttribute('aria-label') || e.textContent.trim(), box.width, box.height]; })"""


def test_a_pinch_whose_fingers_touch_down_on_one_point_zooms_from_there(device_opener: OpenerFor, server: str,
                                                                        small: Path) -> None:
    """Two fingers that touched down on one pixel have no spread to scale: the first move's ratio to 0 took the zoom
    to its furthest in. The spread is taken from the first move, and the pinch zooms by what follows it."""
    with tab_at(device_opener(TABLET), server) as page:
        cdp = page.context.new_cdp_session(page)
        upload_one(page, small)
        page.locator("#view").scroll_into_view_if_needed()
        box = page.locator("#view").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        # down on one point, one finger moved 10 px away (the spread), then both apart to 40 px: four times the zoom
        touches(cdp, [(x, y), (x, y)], [(x, y), (x + 10, y)], [(x - 15, y), (x + 25, y)])
        assert page.evaluate("() => view.zoom") == pytest.approx(4)


@pytest.mark.parametrize(("device", "least"), [({}, 24), (PHONE, 44)], ids=["mouse", "touch"])
def test_every_control_is_a_target_a_finger_can_hit(device_opener: OpenerFor, server: str, small: Path,
                                                    device: dict[str, object], least: int) -> None:
    """The checkboxes were 13 x 13 CSS px (with their words, 23 tall), the sliders 16 tall, the preset's list 19,
    the films list's sort buttons and the key's field 21: under WCAG 2.5.8's 24 x 24, and on a tablet or phone each a
    near miss for a fingertip. Each control is at least 24 x 24 px, and 44 x 44 on a touch screen (2.5.5)."""
    with tab_at(device_opener(device), server) as page:
        upload_one(page, small)
        heatmap_asked(page)
        expect(page.locator("#legend")).to_be_visible()
        targets = page.evaluate(TARGETS)
        assert {"heatmap-toggle", "level", "preset", "api-key", "File", "pan-mode"} <= {t[0] for t in targets}
        small_ones = [t for t in targets if min(t[1:]) < least - 0.5]
        assert not small_ones, small_ones


def touches(cdp: CDPSession, *steps: list[tuple[float, float]]) -> None:
    """Fingers put on the screen at steps[0] (a point each), moved through the steps after it and lifted, as
    Chromium's touch screen gives them (Input.dispatchTouchEvent): a tap, a drag, a pinch. A step with fewer points
    lifts the fingers it leaves out first."""
    def send(kind: str, points: list[tuple[float, float]], first: int = 0) -> None:
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": x, "y": y, "id": first + i} for i, (x, y) in enumerate(points)]})
    send("touchStart", steps[0])
    for before, points in zip(steps, steps[1:]):
        if len(points) < len(before):
            send("touchEnd", before[len(points):], first=len(points))  # the fingers it names are lifted
        send("touchMove", points)
    send("touchEnd", [])


def glide(points: list[tuple[float, float]], moves: list[tuple[float, float]], n: int = 5) -> list[list[tuple]]:
    """The steps of fingers from points, each moved by its own (dx, dy) in n steps."""
    return [[(x + dx * i / n, y + dy * i / n) for (x, y), (dx, dy) in zip(points, moves)] for i in range(n + 1)]


def test_by_touch_a_finger_windows_a_pinch_zooms_and_two_fingers_pan(device_opener: OpenerFor, server: str,
                                                                     small: Path) -> None:
    """On a tablet a pinch on the film changed its window (each finger's moves taken as one drag, jumping between
    them: width 255 to 75) and never its zoom, and touching the film with its top scrolled off screen scrolled the page
    under the finger (the viewer took the focus, scrolled into view). A finger drags the window, a pinch zooms about
    the point between the fingers, two fingers pan; the page neither scrolls nor zooms, and the help says so."""
    with tab_at(device_opener(TABLET), server) as page:
        cdp = page.context.new_cdp_session(page)
        upload_one(page, small)
        page.locator("#view").evaluate("e => e.scrollIntoView({block: 'start'})")
        page.evaluate("() => scrollBy(0, 100)")  # the film's top off screen, as a reader scrolls to it
        top = page.evaluate("() => scrollY")
        box = page.locator("#view").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        k = 700 / box["width"]  # the viewer's pixels a CSS pixel
        state = "() => [view.level, view.width, view.zoom, view.panX, view.panY, scrollY, visualViewport.scale]"

        touches(cdp, *glide([(x, y)], [(-30, 40)]))  # one finger: the window, as a mouse's drag
        assert page.evaluate(state) == [88, 225, 1, 0, 0, top, 1]
        # apart from 60 to 180 px about a point 50 px right of the centre: three times the zoom, that point stays put
        touches(cdp, *glide([(x + 20, y), (x + 80, y)], [(-60, 0), (60, 0)]))
        level, width, zoom, pan_x, pan_y, scroll, scale = page.evaluate(state)
        assert [level, width, scroll, scale] == [88, 225, top, 1]
        assert zoom == pytest.approx(3) and [pan_x, pan_y] == pytest.approx([-100 * k, 0], abs=0.5)
        touches(cdp, *glide([(x - 40, y), (x + 40, y)], [(30, 20), (30, 20)]))  # two fingers together: a pan
        assert page.evaluate(state) == pytest.approx([88, 225, 3, -70 * k, 20 * k, top, 1], abs=0.5)
        # a finger left on the film after a pinch changes nothing; the browser's double-tap zoom is not the viewer's
        touches(cdp, [(x - 40, y), (x + 40, y)], [(x - 50, y), (x + 50, y)], [(x - 50, y)], [(x - 50, y + 60)])
        zoomed = page.evaluate(state)
        assert zoomed[:2] == [88, 225] and zoomed[2] == pytest.approx(3 * 100 / 80)
        touches(cdp, [(x, y)])
        touches(cdp, [(x, y)])
        assert page.evaluate(state)[-2:] == [top, 1]
        page.locator("#pan-mode").tap()  # Pan pressed: a finger pans
        page.locator("#view").scroll_into_view_if_needed()
        box = page.locator("#view").bounding_box()
        before = page.evaluate(state)
        touches(cdp, *glide([(box["x"] + 50, box["y"] + 50)], [(20, -10)]))
        assert page.evaluate(state)[:5] == pytest.approx([*before[:3], before[3] + 20 * k, before[4] - 10 * k])
        expect(page.locator("#view-pointer")).to_contain_text("Pinch")


# The part of the film (in the fitted copy's viewer pixels from its centre) that the viewer's point [x, y] shows
FILM_AT = "([x, y]) => [(x - 350 - view.panX) / view.zoom, (y - 260 - view.panY) / view.zoom]"


def test_every_zoom_keeps_a_point_of_the_film_in_place(page: Page, small: Path) -> None:
    """+ and -, the zoom buttons and the wheel zoomed about the viewer's centre and left the pan as it was: on a panned
    film what sat in the middle of the viewer slid off it at each step. A key or button keeps what is in the middle
    there, to the furthest out, and the wheel what is under the pointer, as a pinch keeps what is between the
    fingers."""
    upload_one(page, small)
    page.focus("#view")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowDown")
    middle = page.evaluate(FILM_AT, [350, 260])
    assert middle == [32, 32]
    for zoom in ("+", "#zoom-in", "#zoom-out", *"-" * 9):
        page.keyboard.press(zoom) if len(zoom) == 1 else page.click(zoom)
        page.focus("#view")
        assert page.evaluate(FILM_AT, [350, 260]) == pytest.approx(middle), zoom
    assert page.evaluate("() => view.zoom") == 0.25
    page.locator("#view").scroll_into_view_if_needed()
    box = page.locator("#view").bounding_box()
    x, y = int(box["x"]) + 100, int(box["y"]) + 80  # whole CSS pixels, as the mouse's events give them
    point = [(x - box["x"]) * 700 / box["width"], (y - box["y"]) * 700 / box["width"]]
    page.mouse.move(x, y)
    under = page.evaluate(FILM_AT, point)
    for _ in range(3):
        page.mouse.wheel(0, -100)
    expect(page.locator("#readout-wl")).to_contain_text("zoom 0.33x")
    assert page.evaluate(FILM_AT, point) == pytest.approx(under)


def test_zoom_and_pan_draw_the_film_again_without_a_window_pass(page: Page, small: Path) -> None:
    """Each zoom step, a pinch's included, passed every pixel of the film's copy through the window table again (20 ms
    a step on a 2,048 px film), where only its drawing in the viewer had changed. Zoom and pan draw the copy already
    windowed; a change of window windows it once."""
    upload_one(page, small)
    page.evaluate("""() => { window.paints = 0; const painted = paint;
        window.paint = (...args) => { window.paints += 1; return painted(...args); }; }""")
    page.focus("#view")
    page.keyboard.press("+")
    page.click("#zoom-in")
    page.locator("#view").hover()
    page.mouse.wheel(0, -100)
    page.focus("#view")
    page.keyboard.press("Shift+ArrowLeft")
    expect(page.locator("#readout-wl")).to_have_text("level 128, width 255, zoom 1.72x")
    assert page.evaluate("() => window.paints") == 0
    page.keyboard.press("ArrowUp")
    assert page.evaluate("() => window.paints") == 1


@pytest.mark.parametrize(("device", "pinch", "wheel"), [({}, False, True), (TABLET, True, False)],
                         ids=["mouse", "touch"])
def test_the_viewers_help_says_what_the_device_has(device_opener: OpenerFor, server: str, small: Path,
                                                  device: dict[str, object], pinch: bool, wheel: bool) -> None:
    """On a tablet the viewer's help gave its keys, a paragraph of keys the reader had none of, and the mouse wheel;
    with a mouse, the pinch. Each says what the device has: the pinch on a touch screen, the wheel with a mouse, the
    keys with a mouse (a keyboard comes with one) or from a keyboard's first key (a tablet's, with no mouse)."""
    with tab_at(device_opener(device), server) as page:
        upload_one(page, small)
        help_ = page.locator("#view-pointer")
        expect(help_).to_be_visible()
        assert ("Pinch" in help_.inner_text(), "wheel" in help_.inner_text()) == (pinch, wheel)
        keys = page.locator("#view-keys")
        expect(keys).to_be_visible() if wheel else expect(keys).to_be_hidden()
        page.locator("#view").tap() if pinch else page.click("#view")
        page.keyboard.press("+")  # a key: a keyboard is there, and its keys' help with it
        expect(keys).to_be_visible()
        # a screen reader hears the keys from the viewer's description, shown or not
        expect(page.locator("#view")).to_have_accessible_description(re.compile(re.escape(keys.inner_text())))


def test_show_in_the_list_brings_its_reading_into_view(device_opener: OpenerFor, server: str,
                                                       data_root: Path) -> None:
    """On a phone the list is under the reading: a film's Show, tapped, redrew a reading scrolled off screen above it,
    and seemed to do nothing. The reading comes into view."""
    first, second = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[:2]
    with tab_at(device_opener(PHONE), server) as page:
        chosen(page, [first, second])
        expect(page.locator("#film-title")).to_have_text(f"Film: {second.name}")
        show = page.get_by_role("button", name=f"show {first.name}")
        show.scroll_into_view_if_needed()
        expect(page.locator("#label")).not_to_be_in_viewport()
        show.tap()
        expect(page.locator("#film-title")).to_have_text(f"Film: {first.name}")
        expect(page.locator("#label")).to_be_in_viewport()


def test_the_lists_names_and_warnings_are_read_in_lines_not_fragments(page: Page) -> None:
    """The list's columns were sized by their words alone: on a 1280 px screen the file column was 42 px wide and
    "normal.jpeg" read "nor / mal. / jpeg" on three lines, and on a phone the scope warnings were a ribbon of one or
    two words a line, each row of a JPEG 510 px tall. A short name is on one line on a screen, and a JPEG's warnings
    take a few lines on a phone; the reading and probability stay in view there (test above)."""
    page.evaluate("""(warnings) => {
        films.push({ name: 'normal.jpeg', status: 'done', readWith: null, result: { label: 'NORMAL',
            positive: 'PNEUMONIA', in_scope: true, near_threshold: false, probability: 0.46, threshold: 0.47,
            warnings, model_id: 'm', probabilities: {} } });
        renderList(); }""", [scope.NO_TAGS, scope.CONTENT_UNCHECKED.text()])
    # the lines the text of the row's cell in a column runs to (from its end: the warnings are the last but one)
    lines = """(fromEnd) => { const cells = document.querySelector('#films tbody tr').cells;
        const range = document.createRange();
        range.selectNodeContents(cells[(cells.length + fromEnd) % cells.length]);
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size; }"""
    assert page.evaluate(lines, 0) == 1
    page.set_viewport_size({"width": 375, "height": 812})
    page.wait_for_function("() => document.documentElement.clientWidth === 375")
    assert page.evaluate(lines, -2) <= 10

def test_several_films_say_what_became_of_each(page: Page, small: Path) -> None:
    """Three films at once, two refused: each reading's announcement was overtaken by the next "Analysing 2 of 3",
    the refusals were only rows of the list, and "3 films analysed." read as three readings. The last word counts
    them, and with a refusal it is an alert."""
    page.set_input_files("#file", files=[
        {"name": small.name, "mimeType": "image/jpeg", "buffer": small.read_bytes()},
        {"name": "report.png", "mimeType": "image/png", "buffer": b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n" * 20},
        {"name": "empty.png", "mimeType": "image/png", "buffer": b""},
    ])
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("3 films: 1 read, 2 rejected: see the list.")
    expect(page.locator("#status")).to_be_empty()  # said once, as the alert
    expect(page.locator("#result")).to_be_visible()  # the film read stays on screen
    expect(page.locator("#films tbody tr", has_text="rejected: ")).to_have_count(2)
    # a batch all read is said in the polite region, and the alert goes
    chosen(page, [small, small])
    expect(page.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
    expect(page.locator("#error")).to_be_hidden()
    # a film read outside the model's scope is counted apart: its reading does not apply
    page.evaluate("() => batchSummary(4, { read: 1, outside: 2, rejected: 1 })")
    expect(alert).to_have_text("4 films: 3 read (2 outside the model's scope: their readings do not apply), "
                               "1 rejected: see the list.")
    # a film the service was too busy to read was never judged: not read, not rejected
    page.route(re.compile(r".*/v1/predict$"), lambda route: route.fulfill(
        status=503, json={"error": "the service is busy, retry shortly"}, headers={"Retry-After": "1"}))
    chosen(page, [small, small])
    expect(alert).to_have_text("2 films: 0 read, 0 rejected, 2 not read (try again): see the list.")
    expect(page.locator("#films tbody tr", has_text="not read: the service is busy")).to_have_count(2)
    chosen(page, small)
    expect(alert).to_have_text("Not read: the service is busy, retry shortly")


def test_a_three_class_reading_gives_each_class_and_the_most_probable(opener: Page, small: Path,
                                                                       tmp_path: Path) -> None:
    """A multiclass model's label is normal vs pneumonia at its threshold; the JSON answer had each class's
    probability, the page and its CSV none. The panel gives them with the most probable class (a rule of its own,
    said as such), and the CSV carries them under the column names of predict's results, with predict's numbers."""
    from pneumoscan.core.metrics import format_figure
    from tests.test_predict import make_bundle

    classes = ["normal", "bacteria", "virus"]
    bundle = make_bundle(tmp_path / "mc", "multiclass", tuple(classes), "pneumonia", threshold=0.3)
    row = predict_paths(bundle, [small])[0]
    predicted = next(csv.DictReader(io.StringIO(format_results([row], "csv"))))
    page = open_tab(opener)
    try:
        with contextmanager(run_server)(create_app(bundle)) as url:
            page.goto(url)
            expect(page.locator("#card")).to_contain_text("multiclass: normal / bacteria / virus")
            chosen(page, small)
            expect(page.locator("#classes")).to_be_visible()
            shown = page.evaluate("() => current.result.probabilities")
            assert list(shown) == classes  # in the model's class order
            assert shown == pytest.approx({c: row[f"probability_{c}"] for c in classes}, abs=SCORE_TOL)
            top = max(classes, key=lambda c: shown[c])
            expect(page.locator("#classes")).to_have_text(
                f"Most probable class: {top} ({', '.join(f'P({c}) = {format_figure(shown[c])}' for c in classes)}); "
                "the reading is normal vs pneumonia at the threshold, not the most probable class.")
            with page.expect_download() as download:
                page.click("#export")
            exported = next(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    finally:
        page.close()
    columns = [k for k in predicted if k.startswith("probability_")]
    assert columns == [k for k in exported if k.startswith("probability_")] == [f"probability_{c}" for c in classes]
    assert [float(exported[k]) for k in columns] == pytest.approx([row[k] for k in columns], abs=SCORE_TOL)


NOT_THE_SERVICE = "not an answer of the service (a proxy, gateway or sign-on page in front of it answered instead)"


def proxy_answering(status: int) -> Callable[[Route], None]:
    """A proxy in front of the service that answers ``status`` with an HTML page of its own."""
    return lambda route: route.fulfill(status=status, content_type="text/html", body="<html>Sign on</html>")


def test_a_reply_that_is_not_the_services_is_refused_not_read(page: Page, small: Path) -> None:
    """An HTML sign-on page answered 200 was taken for a reading: a script error, "Analysing..." for ever and the
    previous film's reading left on screen as if it were the new film's; a gateway's 502 page said only "HTTP 502"."""
    upload_one(page, small)  # a real reading on screen first
    film = {"name": "IM0002.jpeg", "mimeType": "image/jpeg", "buffer": small.read_bytes()}
    for status, words in ((200, f"the reply (HTTP 200 OK) is not a reading: {NOT_THE_SERVICE}: reload the page"),
                          (502, f"HTTP 502 Bad Gateway: {NOT_THE_SERVICE}: reload the page"),
                          # a proxy's rate limit: no sign-on to renew, wait
                          (429, "HTTP 429 Too Many Requests: the proxy or gateway in front of the service refused "
                                "the request as one of too many: wait a moment and try again")):
        page.route("**/v1/predict*", proxy_answering(status))
        chosen(page, files=[film])
        expect(page.locator("#error")).to_contain_text(f"Not read: {words}")
        expect(page.locator("#result")).to_be_hidden()  # the earlier film's reading is not left on screen
        expect(page.locator("#status")).to_have_text("")
        page.unroute("**/v1/predict*")
    page.route("**/v1/model", proxy_answering(200))
    page.locator("#api-key").fill("k" * 16)
    page.locator("#api-key").dispatch_event("change")
    expect(page.locator("#error")).to_contain_text(
        f"Could not load the model card: the reply (HTTP 200 OK) is not the model card: {NOT_THE_SERVICE}")


def png_turned(gray: np.ndarray, after_pixels: bool) -> bytes:
    """A PNG of ``gray`` with an EXIF orientation of 6 (turned a quarter) in an eXIf chunk before or after its pixels
    (IDAT): the PNG specification allows both."""
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    data, exif = buf.getvalue(), Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes().removeprefix(b"Exif\0\0")
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    at = data.index(b"IEND" if after_pixels else b"IDAT") - 4
    return data[:at] + chunk + data[at:]


def test_a_png_turned_by_an_exif_chunk_after_its_pixels_is_shown_as_the_service_reads_it(page: Page,
                                                                                          small: Path) -> None:
    """The browser reads a PNG's eXIf only before its pixels, the service wherever it is: a film turned by one after
    them was shown upright under a notice that called it turned, its heatmap stretched over the other orientation.
    Such a PNG is shown from the service's decode (image=true), as one turned by an eXIf before them may be; a plain
    PNG is shown by the browser."""
    gray = np.asarray(Image.open(small).convert("L"))[:, :160]  # not square: a quarter turn shows
    plain = io.BytesIO()
    Image.fromarray(gray).save(plain, "PNG")
    files = [plain.getvalue(), png_turned(gray, after_pixels=True)]
    shown = page.evaluate("""async (files) => {
        const out = [];
        for (const b64 of files) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            out.push((await sniff(new File([bytes], "film.png", { type: "image/png" }))).shown);
        }
        return out; }""", [base64.b64encode(f).decode() for f in files])
    assert shown == [True, False]


def test_a_reading_of_another_model_than_the_card_shown_is_drawn_with_that_models_card(
    opener: Page, tiny_bundle: Path, small: Path, tmp_path: Path
) -> None:
    """The service restarted with another bundle under an open page: its readings were drawn with the first model's
    card (its threshold's band at 0.117-0.194 under a threshold of 0.446, its heatmap legend). The page loads the card
    of the model that read the film before drawing the reading."""
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other") / "bundle"
    nudge_weights(other)
    versions = [Predictor(b).identity["model_version"] for b in (tiny_bundle, other)]
    assert versions[0] != versions[1]
    page = open_tab(opener)
    try:
        config = uvicorn.Config(create_app(tiny_bundle), host="127.0.0.1", port=0, log_level="warning")
        with running(uvicorn.Server(config)) as url:
            page.goto(url)
            expect(page.locator("#card")).to_contain_text(versions[0])
        port = int(url.rsplit(":", 1)[1])
        config = uvicorn.Config(create_app(other), host="127.0.0.1", port=port, log_level="warning")
        with running(uvicorn.Server(config)):
            upload_one(page, small)
            expect(page.locator("#card")).to_contain_text(versions[1])
            expect(page.locator("#card")).not_to_contain_text(versions[0])
    finally:
        page.close()

"""The reading page's session through a reload (F5, or the browser reloading the tab): its films' readings, viewed
marks, windows and zooms are kept in the tab (sessionStorage), never in storage that outlives it and never the films'
pixels; a film is dropped again to be seen, proved the same by its bytes' SHA-256, not by its name; a session read by
another model than the one the service runs after a restart is said to be so, and can be saved or cleared. The page
runs in headless Chromium (tests/conftest.py's browser, tests/test_page.py's server)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import Page, Route, expect

from tests import test_page
from pneumoscan.serving.app import create_app
from tests.builders import nudge_weights, running
from tests.test_browser import TIMEOUT_MS, WARD, serious_violations
from tests.test_page import tab_at, upload_one

server, tabs, opener, page = test_page.server, test_page.tabs, test_page.opener, test_page.page
small = test_page.small

ROWS = "#films tbody tr"


def two_films(data_root: Path) -> list[Path]:
    return sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[:2]


def reload(page: Page) -> None:
    """F5, leaving the page when the browser asks (the readings are not saved), the card loaded again."""
    page.once("dialog", lambda dialog: dialog.accept())
    page.reload()
    test_page.card_shown(page)


def leaving_asks(page: Page) -> bool:
    """Whether the page asks before it is left (its beforeunload handler cancels the event)."""
    return page.evaluate("""() => { const e = new Event('beforeunload', { cancelable: true });
        window.dispatchEvent(e); return e.defaultPrevented; }""")


def test_a_reload_keeps_the_readings_marks_window_and_zoom_in_the_tab_not_the_films(page: Page, data_root: Path
                                                                                    ) -> None:
    """F5 lost every reading not yet saved. After a reload the list, its readings, viewed marks and order are there;
    a film shown says it must be dropped again to be seen, and dropped again it opens at the window and zoom the
    reader left it at, in its own row. Nothing is kept beyond the tab (localStorage) nor any film's pixels; the page
    still asks before it is left with readings not saved."""
    first, second = two_films(data_root)
    test_page.chosen(page, [first, second])
    expect(page.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
    page.get_by_role("button", name="File", exact=True).click()  # sorted by name
    page.get_by_role("button", name=f"show {first.name}").click()
    page.wait_for_function("() => /zoom/.test(document.getElementById('readout-wl').textContent)")
    # the last changes before the reload: kept as the page is left, not only as the list changes
    page.select_option("#preset", "lung")
    page.click("#zoom-in")
    readings = page.locator(f"{ROWS} td:nth-child(2)").all_inner_texts()

    reload(page)
    expect(page.locator(ROWS)).to_have_count(2)
    assert page.locator(f"{ROWS} td:nth-child(1)").all_inner_texts() == [first.name, second.name]
    assert page.locator(f"{ROWS} td:nth-child(2)").all_inner_texts() == readings
    expect(page.locator(f"{ROWS} >> nth=0")).to_contain_text("viewed; drop the film again to see it")
    expect(page.locator("#session-kept")).to_have_text(
        "Kept from before the page was reloaded: the readings of 2 films, not the films themselves. To see a film "
        f"again, drop it again: {first.name}, {second.name}.")
    kept = page.evaluate("() => [sessionStorage.getItem('pneumoscan-session'), localStorage.length]")
    assert kept[1] == 0 and "data:image" not in kept[0]
    assert [f["sha256"] for f in json.loads(kept[0])["films"]] != [None, None]
    assert leaving_asks(page)

    page.get_by_role("button", name=f"show {first.name}").click()
    expect(page.locator("#label")).not_to_be_empty()
    expect(page.locator("#caption")).to_contain_text(f"drop {first.name} again to see it")
    expect(page.locator("#heatmap-button")).to_be_disabled()
    page.evaluate("() => { sayAfterMs = 50; }")  # what a key did is said 50 ms after the keys stop, not 400
    page.focus("#view")
    page.keyboard.press("h")  # the button is disabled: what to do instead
    expect(page.locator("#view-said")).to_have_text(
        f"No heatmap: the film is not kept through a reload of the page: drop {first.name} again to see it and its "
        "heatmap.")

    upload_one(page, first)
    expect(page.locator(ROWS)).to_have_count(2)
    expect(page.locator("#preset")).to_have_value("lung")
    assert page.evaluate("() => view.zoom") > 1
    expect(page.locator("#session-kept")).to_contain_text(f"drop it again: {second.name}.")

    with page.expect_download():
        page.click("#export")
    reload(page)
    assert not leaving_asks(page)  # saved before the reload: nothing to lose


def test_a_kept_reading_is_taken_by_its_films_bytes_not_its_name(page: Page, data_root: Path) -> None:
    """A film of another patient under the same name (IM0001) is another film, listed as one; the kept film's bytes
    under another name are that film, which takes its row."""
    first, second = two_films(data_root)
    upload_one(page, first)
    reload(page)
    test_page.chosen(page, files=[{"name": first.name, "mimeType": "image/jpeg",
                                   "buffer": second.read_bytes()}])
    expect(page.locator(ROWS)).to_have_count(2)
    expect(page.locator(f"{ROWS} >> nth=0")).to_contain_text("drop the film again to see it")
    test_page.chosen(page, files=[{"name": "renamed.jpeg", "mimeType": "image/jpeg",
                                   "buffer": first.read_bytes()}])
    expect(page.locator("#status")).to_contain_text("renamed.jpeg")
    expect(page.locator(ROWS)).to_have_count(2)
    expect(page.locator("#session")).to_be_hidden()
    assert sorted(page.locator(f"{ROWS} td:nth-child(1)").all_inner_texts()) == [first.name, "renamed.jpeg"]


def test_a_session_of_another_model_is_said_and_saved_or_cleared(opener: Page, tiny_bundle: Path, small: Path,
                                                                tmp_path: Path) -> None:
    """The service restarted with another bundle under a session: after a reload its readings are not shown as the
    new model's; the page says whose they are, as an alert heard once (not at each drawing of the list), and they
    can be saved (each row names its model) or cleared."""
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other") / "bundle"
    nudge_weights(other)
    page = test_page.open_tab(opener)
    try:
        config = uvicorn.Config(create_app(tiny_bundle), host="127.0.0.1", port=0, log_level="warning")
        with running(uvicorn.Server(config)) as url:
            page.goto(url)
            upload_one(page, small)
            first = page.evaluate("() => cardModel")
        port = int(url.rsplit(":", 1)[1])
        config = uvicorn.Config(create_app(other), host="127.0.0.1", port=port, log_level="warning")
        with running(uvicorn.Server(config)):
            reload(page)
            now = page.evaluate("() => cardModel")
            assert now != first
            expect(page.locator("#session-other")).to_have_text(
                f"1 reading of this session was made by the model {first}, not by the model this service runs now "
                f"({now}): not shown as this model's. Export list as CSV to keep it (each row names its model), or "
                "Clear session; a film dropped again is read by this model.")
            # heard as it appears, not only seen: an alert, not said again as the list is drawn again
            expect(page.get_by_role("alert").filter(has_text="made by the model")).to_have_text(
                page.locator("#session-other").inner_text())
            assert serious_violations(page) == []
            page.evaluate("""() => { window.said = 0; new MutationObserver(() => { window.said += 1; }).observe(
                document.getElementById('session-other'), {childList: true, characterData: true, subtree: true}); }""")
            page.get_by_role("button", name=f"show {small.name}").click()
            expect(page.locator("#error")).to_contain_text("Not shown: the reading is of the model")
            page.get_by_role("button", name="File", exact=True).click()
            expect(page.locator(ROWS)).to_have_count(1)
            assert page.evaluate("() => window.said") == 0
            expect(page.locator("#result")).to_be_hidden()
            with page.expect_download() as download:
                page.click("#export")
            rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            assert f"{rows[0]['model_id']} {rows[0]['model_version']}" == first
            page.click("#clear-session")  # saved: cleared without a question
            expect(page.locator("#list")).to_be_hidden()
            expect(page.locator("#status")).to_have_text(
                "Session cleared: no film or reading of it is kept in this tab.")
            reload(page)
            expect(page.locator("#list")).to_be_hidden()
            assert page.evaluate("() => sessionStorage.length") == 0
    finally:
        page.close()


def test_clearing_a_session_not_saved_asks_first(page: Page, small: Path) -> None:
    """Clear session throws readings away: where they are not saved, only once the reader confirms."""
    upload_one(page, small)
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#clear-session")
    expect(page.locator(ROWS)).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#clear-session")
    expect(page.locator("#list")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()


def test_a_file_read_that_never_ends_gives_up_the_digest_not_the_reading(page: Page, small: Path) -> None:
    """The reading waits for the film's digest, and a read of the file that never ended (seen in Chromium: a blob
    stream under load) held the batch at "Analysing..." for good. A read that gives nothing for digestStallMs, by the
    stream and by slices, is given up: the film is read, and known by the digest of the bytes the service read, as over
    plain HTTP."""
    page.evaluate("""() => { digestStallMs = 50; ReadableStreamBYOBReader.prototype.read = () => new Promise(() => {});
        const read = Blob.prototype.arrayBuffer;  // the film's head is read (sniff), its bytes beyond never
        Blob.prototype.arrayBuffer = function () { return this.size > 1024 ? new Promise(() => {}) : read.call(this); };
        }""")
    upload_one(page, small)
    assert page.evaluate("() => films.map((f) => [f.status, f.sha256])") == [
        ["done", f"sha256:{hashlib.sha256(small.read_bytes()).hexdigest()}"]]


def slices_digest(data: bytes) -> str:
    """The page's proof of a film's bytes: the SHA-256 of its 4 MiB slices' SHA-256s."""
    return hashlib.sha256(b"".join(hashlib.sha256(data[at:at + 4 * 2**20]).digest()
                                   for at in range(0, len(data), 4 * 2**20))).hexdigest()


def test_a_file_stream_that_stalls_is_read_on_by_slices_to_the_same_digest(page: Page, small: Path) -> None:
    """A stream of the file that gives nothing for digestStallMs gave up the film's own digest, where the file could
    still be read: the rest of the file, from the last whole slice, is read by slices, to the same digest; a film
    whose stream never gives a byte is proved so, not by the service's digest."""
    # the stalled read alone is bounded by 50 ms: the bound is taken as its read is asked for (the stall's own, put
    # back in a microtask, after it was taken), and the real reads (the stream's before the stall, the slices') keep
    # the page's 15 s
    stalls = """(after) => { digestStallMs = 15000; window.given = 0;
        const read = ReadableStreamBYOBReader.prototype.read;
        ReadableStreamBYOBReader.prototype.read = function (view) {
            if (window.given >= after) {
                digestStallMs = 50; queueMicrotask(() => { digestStallMs = 15000; }); return new Promise(() => {}); }
            return read.call(this, view).then((r) => { window.given += r.value ? r.value.byteLength : 0; return r; });
        }; }"""
    page.evaluate(stalls, 5 * 2**20)  # from its first read past 5 MiB: in the second slice, given in pieces
    assert page.evaluate("""async () => { const file = new File([new Uint8Array(9 * 2 ** 20 + 256).map((_, i) => i)],
        'big.dcm'); return [await sha256Of(file), window.given >= 5 * 2 ** 20]; }""") == [
        slices_digest(bytes(range(256)) * (9 * 2**20 // 256 + 1)), True]
    page.evaluate(stalls, 0)
    upload_one(page, small)
    assert page.evaluate("() => films.map((f) => [f.status, f.sha256])") == [
        ["done", slices_digest(small.read_bytes())]]


def test_a_film_is_proved_by_its_bytes_read_a_slice_at_a_time_not_held_whole(page: Page, tmp_path: Path) -> None:
    """The proof of a film's bytes read the whole file into the page's memory once more than the upload (which sends
    it from the file): a 100 MB DICOM raised Chromium's peak by 210 MB, where 4 MB without it. Its bytes are read a
    slice at a time into one buffer, to the same digest where the browser cannot (each slice read on its own); a film
    of several slices dropped again after a reload still takes its row back."""
    big = tmp_path / "big.dcm"
    big.write_bytes(bytes(range(256)) * (9 * 2**20 // 256 + 1))  # three slices; no DICOM: refused, quickly
    # the same digest where the browser's file streams cannot fill a buffer given (each slice read on its own)
    assert page.evaluate("""async () => {
        const file = new File([new Uint8Array(9 * 2 ** 20 + 256).map((_, i) => i)], 'big.dcm');
        const streamed = await sha256Of(file);
        const getReader = ReadableStream.prototype.getReader;
        ReadableStream.prototype.getReader = function (options) {
            if (options) throw new TypeError('no byob'); return getReader.call(this); };
        try { return [streamed, await sha256Of(file)]; } finally { ReadableStream.prototype.getReader = getReader; }
        }""") == [slices_digest(big.read_bytes())] * 2
    page.evaluate("""() => { window.largestRead = 0; const read = Blob.prototype.arrayBuffer;
        Blob.prototype.arrayBuffer = function () {
            window.largestRead = Math.max(window.largestRead, this.size); return read.call(this); }; }""")
    page.set_input_files("#file", big)
    expect(page.locator(f"{ROWS} td:nth-child(2)")).not_to_have_text("waiting: not read yet")
    assert 0 < page.evaluate("() => window.largestRead") <= big.stat().st_size / 2
    reload(page)
    expect(page.locator("#session-kept")).to_contain_text("drop it again: big.dcm.")
    page.set_input_files("#file", big)
    expect(page.locator("#session")).to_be_hidden()
    expect(page.locator(ROWS)).to_have_count(1)


def test_a_film_read_by_a_service_that_names_no_digest_is_said_to_have_been_read(opener: Page, server: str,
                                                                                  data_root: Path) -> None:
    """Over plain HTTP, a reading without film_sha256 (a service older than it) leaves the film without a fingerprint:
    the notice says the service read it and named none, where it said the service had not read it."""
    first = two_films(data_root)[0]
    answers = []

    def without_digest(route: Route) -> None:
        """The service's own reading of the film (the page's query: its image, its heatmap), less its fingerprint."""
        query = route.request.url.partition("?")[2]
        answer = httpx.post(f"{server}/v1/predict?{query}", files={"file": (first.name, first.read_bytes())},
                            timeout=TIMEOUT_MS / 1000).json()
        answers.append(answer.pop("film_sha256"))
        route.fulfill(json=answer)

    with tab_at(opener, server.replace("127.0.0.1", WARD)) as page:
        page.route("**/v1/predict*", without_digest)
        upload_one(page, first)
        assert len(answers) == 1
        reload(page)
        expect(page.locator("#session-kept")).to_have_text(
            "Kept from before the page was reloaded: the readings of 1 film, not the films themselves. Dropped again, "
            f"{first.name} is listed as a new film: no fingerprint of its bytes could be had when it was dropped (the "
            "service read it, but its reading named no fingerprint (film_sha256), and a page opened over plain HTTP "
            "from another computer cannot fingerprint a film itself).")


def test_a_film_dropped_again_on_a_page_over_plain_http_is_known_by_the_services_digest(
        opener: Page, server: str, data_root: Path) -> None:
    """Over plain HTTP from another computer the browser gives no digest (no secure context): a film dropped again
    after a reload was listed as new, its earlier reading and window not found. It is known by the SHA-256 of the bytes
    the service read; another film under its name is another film; a film of which no digest can be had (refused,
    so unread by the service) is said not to be matched, kept or dropped, never silently listed as new."""
    first, second = two_films(data_root)
    with tab_at(opener, server.replace("127.0.0.1", WARD)) as page:
        assert page.evaluate("() => [window.isSecureContext, typeof crypto.subtle]") == [False, "undefined"]
        upload_one(page, first)
        page.select_option("#preset", "lung")
        test_page.chosen(page, files=[{"name": "IM0001", "mimeType": "image/jpeg", "buffer": b"no film"}])
        expect(page.locator(ROWS).filter(has_text="IM0001")).to_contain_text("rejected")
        reload(page)
        expect(page.locator("#session-kept")).to_have_text(
            "Kept from before the page was reloaded: the readings of 2 films, not the films themselves. To see a film "
            f"again, drop it again: {first.name}. Dropped again, IM0001 is listed as a new film: no fingerprint of its "
            "bytes could be had when it was dropped (it was not read by the service, and a page opened over plain HTTP "
            "from another computer cannot fingerprint a film itself).")
        test_page.chosen(page, files=[{"name": first.name, "mimeType": "image/jpeg",
                                       "buffer": second.read_bytes()}])
        expect(page.locator(ROWS)).to_have_count(3)
        expect(page.locator("#preset")).to_have_value("default")
        test_page.chosen(page, files=[{"name": "IM0001", "mimeType": "image/jpeg", "buffer": b"no film"}])
        expect(page.locator(ROWS)).to_have_count(4)
        expect(page.locator("#session-kept")).to_contain_text(
            "Not matched to a film kept from before the reload, since no fingerprint of its bytes could be had (it was "
            "not read by the service, and a page opened over plain HTTP from another computer cannot fingerprint a "
            "film itself): IM0001; listed as a new film.")
        upload_one(page, first)
        expect(page.locator(ROWS)).to_have_count(4)
        expect(page.locator("#preset")).to_have_value("lung")
        expect(page.locator("#session-kept")).not_to_contain_text(f"drop it again: {first.name}")

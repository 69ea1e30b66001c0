"""A reader's review of the web page and the command line: films chosen one after another are shown in the order
chosen, a batch none of whose films was read leaves no other film's reading on screen, a film's heatmap never lands
on another film, a second stage near its threshold says so in the list and the CSV and each stage sorts apart, a key
typed and a film dropped at once load the model card first, each film opens at its own window unless the reader
locks one, a film over the upload limit is told the way out, a site's own film format is named and described; a
rate that is no number is refused in the command line's words, and a results file that cannot be written is
refused before any film is read.
The page runs in headless Chromium (tests/conftest.py's browser, tests/test_page.py's server and page)."""

from __future__ import annotations

import csv
import io
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Route, expect

from pneumoscan import cli
from pneumoscan.data import readers
from pneumoscan.inference.explain import EMPTY
from pneumoscan.models.card import load_card, save_appearance, save_card
from pneumoscan.serving.app import create_app
from pneumoscan.serving.guard import Access
from tests import test_page, test_readers
from tests.builders import at_threshold, content_check_on, nudge_weights, running
from tests.test_browser import PAGE_KEY, TIMEOUT_MS, run_server
from tests.test_heatmap_scale import sentence

server, tabs, opener, page = test_page.server, test_page.tabs, test_page.opener, test_page.page
device_opener = test_page.device_opener
small = test_page.small
pgm_reader = test_readers.pgm_reader


def other_film(data_root: Path) -> Path:
    """A film other than ``small``, of the other class."""
    return sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[0]


ANSWERED = "films.filter((f) => f.status !== 'waiting').length"


def settle(page: Page, held: list[Route]) -> None:
    """Let the held uploads go, the last held first, each answered before the next goes, until no film waits."""
    for _ in range(400):
        if held:
            answered = page.evaluate(f"() => {ANSWERED}")
            held.pop().continue_()
            page.wait_for_function(f"() => {ANSWERED} > {answered}")
        elif page.evaluate(f"() => {ANSWERED} === films.length"):
            return
        else:
            page.wait_for_timeout(50)
    raise AssertionError("films still waiting")


def test_the_film_chosen_last_is_the_one_on_screen(page: Page, small: Path, data_root: Path) -> None:
    """Two films chosen in quick succession were read side by side: when the first one's reply came last (a large
    film, a slow link), its reading replaced the second film's on screen, and a refusal of the second was wiped by
    the first's reading. Films are read in the order chosen, so the last one chosen is what the page shows."""
    held: list[Route] = []
    page.route(re.compile(r".*/v1/predict$"), lambda route: held.append(route))
    later = other_film(data_root)
    page.set_input_files("#file", small)
    page.wait_for_function("() => films.length === 1")
    while not held:
        page.wait_for_timeout(50)
    page.set_input_files("#file", later)
    page.wait_for_timeout(300)  # time for a second request to set out beside the first
    settle(page, held)
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")
    assert page.evaluate("() => current === films[1]")

    page.set_input_files("#file", small)
    while not held:
        page.wait_for_timeout(50)
    page.set_input_files("#file", files=[{"name": "empty.jpeg", "mimeType": "image/jpeg", "buffer": b""}])
    page.wait_for_timeout(300)
    settle(page, held)
    expect(page.locator("#error")).to_have_text("Rejected: the file is empty (0 bytes).")
    expect(page.locator("#result")).to_be_hidden()


def test_a_batch_with_no_film_read_leaves_no_reading_on_screen(page: Page, small: Path) -> None:
    """A single refused film hides the reading on screen (it is another film's); two refused at once left the film
    read before on screen under "2 films: 0 read, 2 rejected", as if it were one of them."""
    test_page.upload_one(page, small)
    empty = {"mimeType": "image/jpeg", "buffer": b""}
    test_page.chosen(page, files=[{"name": "a.jpeg", **empty}, {"name": "b.jpeg", **empty}])
    expect(page.get_by_role("alert")).to_have_text("2 films: 0 read, 2 rejected: see the list.")
    expect(page.locator("#result")).to_be_hidden()
    assert page.evaluate("() => current === null")


def test_a_films_heatmap_never_lands_on_the_next_film(page: Page, small: Path, data_root: Path) -> None:
    """Shown again from the list, a film whose map was still being decoded when the reader moved on to another
    film put its map over that film (stretched to its size), and that film's "Show heatmap" then drew it. The
    first film's map is held mid-decode while the second is shown."""
    later = other_film(data_root)
    page.set_input_files("#file", [small, later])
    expect(page.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
    test_page.heatmap_asked(page)  # the tiny model's maps are all dark: the first film's is drawn all bright
    expect(page.locator("#legend")).to_be_visible()
    page.evaluate("""() => { const c = document.createElement('canvas'); c.width = c.height = 75;
        const ctx = c.getContext('2d'); ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, 75, 75);
        films[0].cam = c.toDataURL('image/png'); }""")
    total = "() => view.cam.reduce((sum, v) => sum + v, 0)"
    page.evaluate("""() => { const decode = grayOf; window.held = [];
        grayOf = (source) => source !== films[0].cam ? decode(source) : new Promise((resolve) => window.held.push(
            () => { const done = decode(source); window.done = done.then(() => new Promise((r) => setTimeout(r, 100)));
                    resolve(done); })); }""")
    page.get_by_role("button", name=f"show {small.name}").click()
    page.wait_for_function("() => window.held.length === 1")  # the first film's map, held mid-decode
    page.get_by_role("button", name=f"show {later.name}").click()
    page.wait_for_function("() => current === films[1] && view.cam !== null && view.w > 0")
    own = page.evaluate(total)
    page.evaluate("() => window.held.pop()()")
    page.evaluate("() => window.done")
    assert page.evaluate(total) == own, "the film on screen shows its own map"
    page.check("#heatmap-toggle")
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")


def test_an_empty_map_says_so_in_the_overlays_words(page: Page, server: str, small: Path) -> None:
    """The page colours the bare map itself: an empty one (the tiny model's of a real film: no region raises the
    log-odds) was drawn in the scale's lowest colour alone under the usual legend, as if the map had found nothing or
    failed to draw, where the overlay of the same film says it is empty. The legend says it in the overlay's words
    (/v1/model's heatmap_empty), by the overlay's rule: a map that reaches the scale's first step (level 1 of 255)
    anywhere is not empty."""
    test_page.upload_one(page, small)
    test_page.heatmap_asked(page)
    expect(page.locator("#legend")).to_be_visible()
    reply = httpx.post(f"{server}/v1/predict", params={"heatmap": "true"}, timeout=TIMEOUT_MS / 1000,
                       files={"file": (small.name, small.read_bytes(), "image/jpeg")})
    empty = EMPTY.format(explains="PNEUMONIA")
    assert test_page.png_of(reply.json()["heatmap"]).info["Description"].endswith(f"; {empty}")
    said = f" {sentence(empty)}"
    assert page.inner_text("#legend-text").endswith(said)
    expect(page.locator("#status")).to_contain_text(said)
    page.evaluate("""async () => { const c = document.createElement('canvas'); c.width = c.height = 75;
        const ctx = c.getContext('2d'); const map = ctx.createImageData(75, 75);
        for (let i = 3; i < map.data.length; i += 4) map.data[i] = 255;
        map.data.set([1, 1, 1], 4 * (37 * 75 + 37));  // the scale's first step, at one pixel
        ctx.putImageData(map, 0, 0);
        films[0].cam = c.toDataURL('image/png'); await loadCam(films[0]); heatControls(); }""")
    expect(page.locator("#legend-text")).not_to_contain_text("Empty map")


def test_a_film_the_browser_cannot_draw_leaves_no_other_film_in_the_viewer(page: Page, small: Path,
                                                                          data_root: Path) -> None:
    """A film the service reads but the browser cannot draw (an arithmetic-coded JPEG; a film too large for the
    tab's memory) was captioned "cannot be shown" with the film read before still in the viewer, under the new
    film's name. The browser's refusal is made here by its decode function failing for the second film. Printed, the
    empty viewer is left out: a black frame under the reading passed for its film."""
    test_page.upload_one(page, small)
    assert test_page.centre(page) != [0, 0, 0]
    page.evaluate("""() => { const decode = grayOf; grayOf = (source) => current === films[1] ?
        Promise.reject(new Error('the browser cannot display this image')) : decode(source); }""")
    later = other_film(data_root)
    test_page.chosen(page, later)
    expect(page.locator("#caption")).to_have_text("The film cannot be shown: the browser cannot display this image.")
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")
    assert test_page.centre(page) == [0, 0, 0] and page.evaluate("() => view.gray === null")
    expect(page.locator("#film-pending")).to_be_hidden()  # not decoding: the caption says why there is no film
    page.emulate_media(media="print")
    expect(page.locator("#view")).to_be_hidden()
    expect(page.locator("#caption")).to_be_visible()


def test_the_second_stage_column_qualifies_each_reading_and_sorts_each_stage_apart(page: Page) -> None:
    """The panel said "Etiology: virus (..., near the threshold)", but the list gave "virus (P(virus) = 0.410)" and
    the CSV "virus", as plainly as a clear call: both qualify it, as they do the first stage's reading.
    Films read with two second stages (the service restarted with another) were sorted by their probabilities as one,
    a P(atypical) between two P(virus), and the films without a second-stage reading came first: each stage's
    readings are sorted among themselves, the stages by name, those without a reading last. A film read while no
    card had loaded, and not handed over, says that whether it had a second stage is not known."""
    listed, exported = page.evaluate("""() => {
        const stage = (near) => ({ task: 'etiology', label: 'virus', positive: 'virus', probability: 0.41,
            threshold: 0.4, near_threshold: near, in_scope: true, warnings: [] });
        const result = (near) => ({ label: 'PNEUMONIA', positive: 'PNEUMONIA', in_scope: true, near_threshold: false,
            probability: 0.9, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {}, etiology: stage(near) });
        films.push({ name: 'near.jpeg', result: result(true), status: 'done' },
                   { name: 'clear.jpeg', result: result(false), status: 'done' });
        renderList();
        return [[...document.querySelectorAll('#films tbody tr')].map((row) => [row.cells[0].textContent,
            row.cells[3].textContent]), csv()];
    }""")
    assert dict(listed) == {"near.jpeg": "virus (P(virus) = 0.410, near the threshold)",
                            "clear.jpeg": "virus (P(virus) = 0.410)"}
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(exported))}
    assert rows["near.jpeg"]["etiology"] == "virus (near the threshold)" and rows["clear.jpeg"]["etiology"] == "virus"

    page.evaluate("""() => {
        const result = (etiology) => ({ label: 'PNEUMONIA', positive: 'PNEUMONIA', in_scope: true,
            near_threshold: false, probability: 0.9, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {},
            etiology });
        const stage = (task, positive, label, probability) => ({ task, positive, label, probability, threshold: 0.5,
            near_threshold: false, in_scope: true, warnings: [] });
        const card = (second) => ({ contentChecked: true, followsAnother: false, second, classes: [] });
        const typicality = card({ task: 'typicality', positive: 'atypical' });
        films.push(
            { name: 'atypical.jpeg', status: 'done', readWith: typicality,
              result: result(stage('typicality', 'atypical', 'atypical', 0.95)) },
            { name: 'no card.jpeg', status: 'done', readWith: null, result: result(undefined) },
            { name: 'typical.jpeg', status: 'done', readWith: typicality,
              result: result(stage('typicality', 'atypical', 'typical', 0.2)) },
            { name: 'none.jpeg', status: 'done', readWith: card(null), result: result(undefined) },
            { name: 'bacteria.jpeg', status: 'done', readWith: card({ task: 'etiology', positive: 'virus' }),
              result: result(stage('etiology', 'virus', 'bacteria', 0.1)) });
        renderList(); }""")
    column = page.get_by_role("button", name="Second stage")
    column.click()
    names = page.locator("#films tbody td:nth-child(1)")
    expect(names).to_have_text(["bacteria.jpeg", "near.jpeg", "clear.jpeg", "typical.jpeg", "atypical.jpeg",
                                "no card.jpeg", "none.jpeg"])
    column.click()
    expect(names).to_have_text(["near.jpeg", "clear.jpeg", "bacteria.jpeg", "atypical.jpeg", "typical.jpeg",
                                "no card.jpeg", "none.jpeg"])
    expect(page.locator("#films tbody tr").nth(-1).locator("td").nth(3)).to_have_text("no second stage")
    expect(page.locator("#films tbody tr").nth(-2).locator("td").nth(3)).to_have_text("not known")


def test_a_second_stage_of_a_film_out_of_scope_is_out_of_scope_in_the_panel_list_and_csv(page: Page) -> None:
    """The first stage read "out of scope (PNEUMONIA)" in grey, while its second stage's "virus" was listed,
    exported and shown in the panel as a plain call: it read the same film, and applies no more."""
    listed, exported, panel = page.evaluate("""() => {
        const film = { name: 'ct.dcm', status: 'done', dicom: true, result: { label: 'PNEUMONIA',
            positive: 'PNEUMONIA', in_scope: false, near_threshold: false, probability: 0.9, threshold: 0.5,
            warnings: ['modality CT: not a radiograph'], model_id: 'm', probabilities: {},
            etiology: { task: 'etiology', label: 'virus', positive: 'virus', probability: 0.727, threshold: 0.5,
                        near_threshold: false, in_scope: false, warnings: [] } } };
        films.push(film);
        renderList();
        const row = document.querySelector('#films tbody tr');
        return [row.cells[3].textContent, csv(), secondLine(film.result)];
    }""")
    assert listed == "out of scope (virus, P(virus) = 0.727)"
    assert next(csv.DictReader(io.StringIO(exported)))["etiology"] == "out of scope (virus)"
    assert panel == ["Etiology: outside the model's scope, does not apply: virus (P(virus) = 0.727, threshold 0.500)",
                     "out-of-scope"]


def test_a_key_typed_and_a_film_dropped_at_once_load_the_card_first(opener: Page, tiny_bundle: Path,
                                                                     small: Path) -> None:
    """The card is loaded when the key field changes, which a browser says only when the field loses focus: a key
    pasted and a film dropped straight after gave a reading without the card (still "Loading"), and its heatmap
    was refused with "enter the API key" for a key that was entered."""
    page = test_page.open_tab(opener)
    try:
        with contextmanager(run_server)(create_app(tiny_bundle, access=Access(api_key=PAGE_KEY))) as url:
            page.goto(url)
            expect(page.locator("#error")).to_contain_text("an API key is required")
            # the card said "Loading ..." for as long as the page stayed open, beside the refusal
            expect(page.locator("#card")).to_have_text(re.compile(r"^Not loaded.*an API key is required"))
            page.fill("#api-key", PAGE_KEY)  # focus stays in the field: no change event
            test_page.dropped(page, small.read_bytes(), small.name, "image/jpeg")
            expect(page.locator("#result")).to_be_visible()
            expect(page.locator("#card")).to_contain_text(load_card(tiny_bundle).model_id)
            test_page.heatmap_asked(page)
            expect(page.locator("#legend")).to_be_visible()
            expect(page.locator("#error")).to_be_hidden()
    finally:
        page.close()



@contextmanager
def opened(opener: Page, first: FastAPI, before: Callable[[Page], None] = lambda page: None) -> Iterator[Page]:
    """A page opened on the service ``first`` (and ``before`` done on it), that service then stopped."""
    page = test_page.open_tab(opener)
    try:
        with contextmanager(run_server)(first) as url:
            page.goto(url)
            test_page.card_shown(page)
            before(page)
        yield page
    finally:
        page.close()


@contextmanager
def serving_again(page: Page, app: FastAPI) -> Iterator[None]:
    """``app`` served on the port of the service ``page`` was opened on: that service restarted with another bundle."""
    config = uvicorn.Config(app, host="127.0.0.1", port=urlsplit(page.url).port, log_level="warning")
    with running(uvicorn.Server(config)):
        yield


@contextmanager
def restarted(opener: Page, first: Path, then: Path, before: Callable[[Page], None] = lambda page: None
              ) -> Iterator[Page]:
    """A page opened on a service of bundle ``first`` (and ``before`` done on it), the service then restarted on the
    same port with ``then``."""
    with opened(opener, create_app(first), before) as page, serving_again(page, create_app(then)):
        yield page


def test_a_reading_at_another_threshold_is_drawn_with_that_thresholds_card(opener: Page, tiny_bundle: Path,
                                                                           small: Path, tmp_path: Path) -> None:
    """`pneumoscan threshold` keeps a bundle's weights, so its model id and version: the service restarted with the
    new threshold under an open page, its readings were drawn with the old card, the new threshold's mark beside
    the old threshold's hatched interval and "Too close to the threshold ... runs from" the old one."""
    other = tmp_path / "rethresholded"
    shutil.copytree(tiny_bundle, other)
    save_card(other, at_threshold(load_card(other), threshold=0.3, threshold_interval=[0.25, 0.5]))
    assert load_card(tiny_bundle).threshold_interval != [0.25, 0.5]
    with restarted(opener, tiny_bundle, other) as page:
        test_page.upload_one(page, small)
        expect(page.locator("#probability")).to_contain_text("threshold 0.300")
        expect(page.locator("#bar-key")).to_contain_text("0.250 to 0.500")
        expect(page.locator("#card")).to_contain_text("0.300 (")


def test_a_heatmap_of_another_model_is_refused_not_drawn_under_the_reading(opener: Page, tiny_bundle: Path,
                                                                           small: Path, tmp_path: Path) -> None:
    """A film read by one model, the service restarted with another bundle, then the heatmap asked for: the other
    model's map was drawn as the evidence of the first model's reading on screen."""
    other = shutil.copytree(tiny_bundle.parent, tmp_path / "other") / tiny_bundle.name
    nudge_weights(other)
    with restarted(opener, tiny_bundle, other, lambda page: test_page.upload_one(page, small)) as page:
        page.click("#heatmap-button")
        expect(page.get_by_role("alert")).to_contain_text("Heatmap not computed: the service now runs the model")
        expect(page.locator("#result")).to_be_visible()
        assert page.evaluate("() => current.cam === null && view.cam === null")
        expect(page.locator("#heatmap-toggle")).to_be_disabled()
        expect(page.locator("#legend")).to_be_hidden()


def test_a_film_not_read_yet_is_exported_as_waiting_not_rejected(page: Page, small: Path, data_root: Path) -> None:
    """The list exported while a batch was still being read gave each film not read yet as "rejected: waiting"."""
    held: list[Route] = []
    page.route(re.compile(r".*/v1/predict$"), lambda route: held.append(route))
    page.set_input_files("#file", [small, other_film(data_root)])
    while not held:
        page.wait_for_timeout(50)
    with page.expect_download() as download:
        page.click("#export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [row["reading"] for row in rows] == ["waiting: not read yet"] * 2
    settle(page, held)



def test_a_service_that_never_answers_is_a_refusal_not_a_wait_without_end(page: Page, small: Path,
                                                                         data_root: Path) -> None:
    """A service that took a film and never answered left "Analysing..." on screen for ever, and the film chosen
    after it waiting behind it. The page waits answerTimeoutMs (120 s; 0.2 s here, for the request never answered
    alone) and refuses the film with why."""
    held: list[Route] = []
    page.route(re.compile(r".*/v1/predict$"), lambda route: held.append(route))  # never answered
    page.evaluate("() => { answerTimeoutMs = 200; }")
    page.set_input_files("#file", small)
    expect(page.get_by_role("alert")).to_have_text("Not read: no answer from the service within 0.2 s, so nothing was "
                                                   "read: try again, and if this persists, tell the administrator")
    expect(page.locator("#status")).to_be_empty()
    page.unroute(re.compile(r".*/v1/predict$"))
    page.evaluate("() => { answerTimeoutMs = 120_000; }")  # the film after it is read by the service, at its pace
    later = other_film(data_root)
    page.set_input_files("#file", later)
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")


# ---------------------------------------------------------------- the command line


def test_a_rate_that_is_no_number_is_refused_in_the_options_words(capsys: pytest.CaptureFixture) -> None:
    """argparse's own refusal named the parsing function: "invalid _probability value: 'abc'"."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--print-config", "--target-sensitivity", "abc"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("pneumoscan train: error: argument --target-sensitivity: must be between 0 and "
                                       "1, got abc (`pneumoscan train --help` lists the options)\n")


def test_a_results_folder_that_takes_no_file_is_refused_before_any_film_is_read(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``predict --out /proc/r.csv`` read every film, said which could not be read, and then failed naming a
    temporary file the user never gave (``/proc/.r.csv.x7q.tmp: no such file or directory``); ``pacs --store`` would
    have stored its reports in the PACS first. The folder is tried before any work."""
    unreadable = tmp_path / "in" / "broken.jpeg"  # read, it would be said on stderr as unreadable
    unreadable.parent.mkdir()
    unreadable.write_bytes(b"not a film")
    assert cli.main(["predict", str(tiny_bundle), str(unreadable), "--out", "/proc/r.csv"]) == 2
    assert capsys.readouterr().err == ("pneumoscan predict: error: --out /proc/r.csv cannot be written: /proc: no such "
                                       "file or directory\n")
    assert cli.main(["predict", str(tiny_bundle), str(unreadable), "--out", str(tmp_path / "r.csv")]) == 1
    assert (tmp_path / "r.csv").read_text().startswith("path,")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "in", tmp_path / "r.csv"]


def test_a_second_stage_its_own_check_flags_is_out_of_scope_with_its_warnings(page: Page) -> None:
    """The second stage's reading was out of scope only with the first's, and its own content check's warnings were
    nowhere: a film unlike its training films read "virus" as a plain call. Its own in_scope decides, and its
    warnings follow the film's, named by its stage, in the panel, the list and the CSV."""
    unlike = "image content: blurrier than the training films"
    listed, exported, panel, shown, heard, sorted_by = page.evaluate("""(unlike) => {
        const film = { name: 'a.jpeg', status: 'done', result: { label: 'PNEUMONIA', positive: 'PNEUMONIA',
            in_scope: true, near_threshold: false, probability: 0.9, threshold: 0.5, warnings: ['no DICOM tags'],
            model_id: 'm', probabilities: {}, etiology: { task: 'etiology', label: 'virus', positive: 'virus',
            probability: 0.727, threshold: 0.5, near_threshold: false, in_scope: false, warnings: [unlike] } } };
        films.push(film);
        renderList();
        showWarnings(allWarnings(film.result), film.result.in_scope);  // as showResult shows them
        const row = document.querySelector('#films tbody tr');
        return [[row.cells[3].textContent, row.cells[4].textContent], csv(), secondLine(film.result),
                [...document.querySelectorAll('#warnings li')].map((item) => item.textContent),
                announcement(film.result), ORDERS.warnings[2](film.result)];
    }""", unlike)
    assert listed == ["out of scope (virus, P(virus) = 0.727)", f"no DICOM tags; Etiology stage: {unlike}"]
    row = next(csv.DictReader(io.StringIO(exported)))
    assert row["etiology"] == "out of scope (virus)" and row["etiology_in_scope"] == "False"
    assert row["warnings"] == "no DICOM tags" and row["etiology_warnings"] == unlike  # each stage's, as predict's
    assert panel[1] == "out-of-scope" and shown == ["Scope: no DICOM tags", f"Scope: Etiology stage: {unlike}"]
    # a screen reader hears both stages' warnings, and that the second reading does not apply; the list sorts by all
    assert heard.endswith("2 scope warnings. Etiology: outside its scope, does not apply."), heard
    assert sorted_by == 2


def test_the_page_loads_with_no_error_in_its_console(browser: Browser, server: str) -> None:
    """Every load of the page logged "Failed to load resource: 404 (Not Found)" in the console: the browser asks for
    /favicon.ico, which the service does not serve. The page names its icon (none), so nothing is asked for."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"{m.text} {m.location['url']}") if m.type == "error" else None)
        page.goto(server, wait_until="networkidle")
        test_page.card_shown(page)
        assert not errors, errors
    finally:
        context.close()


def test_a_card_that_never_comes_is_a_refusal_not_a_wait_without_end(page: Page, small: Path) -> None:
    """With no card on the page (its first load refused), a film chosen loads the card first: a /v1/model never
    answered (a stuck proxy) left the film waiting under "Analysing..." for ever, and every film chosen after it.
    The card is waited for as long as a reading is (answerTimeoutMs: 120 s; 0.2 s here for the card, and the
    page's 120 s again for the reading asked for after it)."""
    held: list[Route] = []
    page.route(re.compile(r".*/v1/model$"), lambda route: held.append(route))  # never answered
    # heatmapWords null: as after a refused first load; the bound is taken as a request is made, so the card's
    # request, made, puts the page's own back for the film's reading
    page.evaluate("""() => { answerTimeoutMs = 200; heatmapWords = null; const fetched = window.fetch;
        window.fetch = (url, init) => { if (/[/]v1[/]model$/.test(url)) answerTimeoutMs = 120_000;
            return fetched(url, init); }; }""")
    page.set_input_files("#file", small)
    expect(page.locator("#film-title")).to_have_text(f"Film: {small.name}")
    assert held and page.evaluate("() => films[0].status") == "done"
    page.click("#heatmap-button")  # still no card: no map whose scale the page cannot name
    expect(page.get_by_role("alert")).to_contain_text("Heatmap not computed: the model card has not loaded")


def test_each_film_opens_at_its_own_window_unless_the_reader_locks_one(page: Page, small: Path,
                                                                       data_root: Path) -> None:
    """The window (preset, level, width, invert) set for one film stayed on the next one, shown under a "default"
    the reader had not chosen for it: a lung window or an inverted film carried over silently can hide a finding. A
    film opens at the default window the first time, then at the window the reader left it at, as in a PACS viewer (a
    film looked at again had lost the window its finding was seen in), said with it; "Lock window" keeps the reader's
    for the next films, and says so."""
    later = other_film(data_root)
    test_page.chosen(page, [small, later])
    expect(page.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
    readout, said = page.locator("#readout-wl"), page.locator("#status")
    default = "level 128, width 255, zoom 1.00x"
    expect(readout).to_have_text(default)
    page.select_option("#preset", "lung")
    page.check("#invert")
    own = "level 80, width 140, inverted"
    expect(readout).to_have_text(f"{own}, zoom 1.00x")
    windowed = test_page.centre(page)
    page.get_by_role("button", name=f"show {small.name}").click()  # another film: its default
    expect(page.locator("#film-title")).to_have_text(f"Film: {small.name}")
    expect(readout).to_have_text(default)
    expect(said).not_to_contain_text("window")  # the default is not said
    assert (page.input_value("#preset"), page.input_value("#level"), page.input_value("#width")) == (
        "default", "128", "255") and not page.is_checked("#invert")
    page.get_by_role("button", name=f"show {later.name}").click()  # the film again: the window it was left at
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")
    expect(readout).to_have_text(f"{own}, zoom 1.00x")
    expect(said).to_have_text(re.compile(rf"^Film: {re.escape(later.name)}\. .* This film's window: {own}\.$"))
    assert page.input_value("#preset") == "lung" and page.is_checked("#invert")
    assert test_page.centre(page) == windowed

    page.get_by_role("checkbox", name="Lock window").check()
    page.select_option("#preset", "bone")
    page.get_by_role("button", name=f"show {small.name}").click()
    expect(page.locator("#film-title")).to_have_text(f"Film: {small.name}")
    expect(readout).to_have_text("level 190, width 110, inverted, window locked, zoom 1.00x")
    expect(said).to_have_text(re.compile(r"\. Window locked: level 190, width 110, inverted\.$"))
    assert page.input_value("#preset") == "bone"


def test_each_film_opens_fitted_and_at_its_own_zoom_and_pan_when_shown_again(page: Page, small: Path,
                                                                             data_root: Path) -> None:
    """Showing another film put the film left back at zoom 1, centred: a reader who zoomed in on a finding, looked at
    the next film and came back had to find it again. As in a PACS viewer, a film opens fitted the first time and
    at the zoom and pan the reader left it at when shown again, as its window does."""
    later = other_film(data_root)
    test_page.chosen(page, [small, later])
    expect(page.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
    readout = page.locator("#readout-wl")
    for _ in range(3):
        page.click("#zoom-in")
    page.click("#pan-mode")
    page.locator("#view").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    zoomed = readout.inner_text()
    assert "zoom 1.00x" not in zoomed, zoomed
    left = page.evaluate("() => [view.zoom, view.panX, view.panY]")
    assert left[1] != 0 and left[2] != 0, "panned"
    seen = test_page.centre(page)
    page.get_by_role("button", name=f"show {small.name}").click()  # another film: fitted the first time
    expect(page.locator("#film-title")).to_have_text(f"Film: {small.name}")
    expect(readout).to_have_text("level 128, width 255, zoom 1.00x")
    assert page.evaluate("() => [view.zoom, view.panX, view.panY]") == [1, 0, 0]
    page.get_by_role("button", name=f"show {later.name}").click()  # the film again: where the reader left it
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")
    expect(readout).to_have_text(zoomed)
    assert page.evaluate("() => [view.zoom, view.panX, view.panY]") == left
    assert test_page.centre(page) == seen


def test_the_list_and_the_csv_say_the_same_of_a_film_in_each_state(page: Page, small: Path, data_root: Path) -> None:
    """The list and the CSV built their words for a film without a reading apart: the list said "waiting" where the
    CSV said "waiting: not read yet". Each state, rejected (an empty file), not read (the service busy), read and
    waiting (its upload held), is said the same in both."""
    held: list[Route] = []
    answers = [lambda route: route.fulfill(status=503, json={"error": "the service is busy"}),
               lambda route: route.continue_()]
    page.route(re.compile(r".*/v1/predict$"), lambda route: (answers.pop(0) if answers else held.append)(route))
    films = [("empty.jpeg", b""), ("busy.jpeg", small.read_bytes()), (small.name, small.read_bytes()),
             ("later.jpeg", other_film(data_root).read_bytes())]
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": data}
                                         for name, data in films])
    page.wait_for_function("() => films[2].status === 'done'")
    while not held:
        page.wait_for_timeout(50)
    with page.expect_download() as download:
        page.click("#export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    listed = page.locator("#films tbody td:nth-child(2)").all_inner_texts()
    assert [row["reading"] for row in rows] == listed
    assert [text.split(":")[0] for text in listed] == ["rejected", "not read", listed[2], "waiting"], listed
    assert listed[2] in {"NORMAL", "PNEUMONIA"} or listed[2].startswith("out of scope")
    settle(page, held)


def test_a_film_being_decoded_shows_no_other_film_under_its_reading(page: Page, small: Path, data_root: Path) -> None:
    """While the next film was decoded for the viewer (a second or more for a large plate), the film shown before
    stayed in the viewer, with its window readout, under the next film's name and reading. The next film's decode
    is held here: the viewer is empty until it is drawn, and says it is decoding. Printed meanwhile, the page gave
    the reading above an empty black viewer, as if that were the film: the print says the film is not shown."""
    test_page.upload_one(page, small)
    page.evaluate("""() => { const decode = grayOf; window.held = [];
        grayOf = (source) => current !== films[1] ? decode(source)
            : new Promise((resolve) => window.held.push(() => resolve(decode(source)))); }""")
    later = other_film(data_root)
    page.set_input_files("#file", later)
    page.wait_for_function("() => window.held.length === 1")
    expect(page.locator("#film-title")).to_have_text(f"Film: {later.name}")
    assert test_page.centre(page) == [0, 0, 0] and page.evaluate("() => view.gray === null")
    expect(page.locator("#readout-wl")).to_be_empty()
    expect(page.get_by_text("Decoding the film for the viewer...")).to_be_visible()
    page.emulate_media(media="print")
    expect(page.locator("#view")).to_be_hidden()
    expect(page.get_by_text("The film was still being decoded for the viewer when this was printed")).to_be_visible()
    expect(page.locator("#label")).to_be_visible()  # the reading itself is complete, and printed
    page.evaluate("() => window.held.pop()()")
    page.wait_for_function("() => view.film === films[1]")
    assert test_page.centre(page) != [0, 0, 0]
    expect(page.locator("#view")).to_be_visible()  # printed with its film
    expect(page.locator("#film-pending")).to_be_hidden()


def test_a_film_read_by_a_model_before_a_restart_is_not_shown_again_with_the_new_card(
        opener: Page, tiny_bundle: Path, tiny_etiology_bundle: Path, small: Path, data_root: Path,
        tmp_path: Path) -> None:
    """A film read before the service restarted with another threshold, shown again from the list after a film read
    since loaded the new card, was drawn with that card: its threshold of 0.475 beside the new threshold's hatched
    interval, 0.250 to 0.350 (and a heatmap's legend would be the new card's scale). It is refused with why. Its row
    in the list was coloured by the new card's content check: read by a model without one (left uncoloured), it
    turned red or green as a clear call once the card of a model with the check had loaded.
    Restarted again with the same weights and threshold and another card (no appearance record: the check off), the
    page kept the card with the check, and coloured the new readings as clear calls: each reading names the card it
    was read with (card_digest). The list and its CSV gave the second stage's column from the card loaded: a film
    read without a second stage was "not run" under a card with one, and the second stage's readings vanished under
    a card without one.
    Restarted again with an etiology model alone, the list's probability column gave its P(virus) as a bare number
    beside the P(PNEUMONIA) before and sorted them as one, and a film not read came first: each cell names its class
    where the list holds several, each class sorts apart, and a film not read comes last, as in the reading's other
    columns (it came first in an ascending sort of the reading or of the scope warnings)."""
    unchecked = shutil.copytree(tiny_bundle, tmp_path / "unchecked")  # another threshold, no appearance record
    save_card(unchecked, at_threshold(load_card(unchecked), threshold=0.3, threshold_interval=[0.25, 0.35]))
    other = shutil.copytree(unchecked, tmp_path / "checked")  # the same weights and threshold, and a record of its
    # training films' appearance: a model with the content check (what it flags matters not here)
    save_appearance(other, content_check_on())
    with opened(opener, create_app(tiny_bundle), lambda page: test_page.upload_one(page, small)) as page:
        rows = page.locator("#films tbody tr")
        first = rows.nth(0).locator("td").nth(1)
        with serving_again(page, create_app(other, etiology=tiny_etiology_bundle)):
            expect(first).to_have_class("indeterminate")
            assert page.evaluate("() => !films[0].result.near_threshold && films[0].result.in_scope")  # else uncoloured
            later = other_film(data_root)
            test_page.upload_one(page, later)
            expect(page.locator("#card")).to_contain_text("0.300 (")
            expect(page.locator("#card")).to_contain_text("on: films unlike the training films are flagged")
            expect(first).to_have_class("indeterminate")
            page.get_by_role("button", name=f"show {small.name}").click()
            # the refusal: an alert beside the notice of the session's reading of another card (test_page_session)
            refusal = page.locator("#error[role=alert]")
            expect(refusal).to_contain_text("Not shown: the reading is of the model ")
            expect(refusal).to_contain_text(
                f"at threshold {load_card(tiny_bundle).threshold:.3f}, not of the model this page describes")
            expect(page.locator("#result")).to_be_hidden()
            assert page.evaluate("() => current === null")
            page.get_by_role("button", name=f"show {later.name}").click()  # a reading of the card shown is shown
            expect(page.locator("#result")).to_be_visible()
            expect(page.locator("#bar-key")).to_contain_text("0.250 to 0.350")
            assert page.evaluate("() => films[1].result.label === 'PNEUMONIA'")  # so the second stage read it
            etiology = rows.nth(1).locator("td").nth(3).inner_text()
            assert re.fullmatch(r"(bacteria|virus) \(P\(virus\) = [01]\.\d{3}(, near the threshold)?\)", etiology)
            expect(rows.nth(0).locator("td").nth(3)).to_have_text("no second stage")  # its model had none
        with serving_again(page, create_app(unchecked)):
            page.click("#heatmap-button")  # the film on screen was read with the card before: not its map
            expect(refusal).to_contain_text(
                "Heatmap not computed: the service now runs the model simple_cnn-pneumonia-")
            expect(refusal).to_contain_text("with another card than the one that read this film")
            expect(page.locator("#legend")).to_be_hidden()
            test_page.upload_one(page, small)
            expect(page.locator("#card")).to_contain_text("off: this bundle records no appearance")
            assert page.evaluate("() => !films[2].result.near_threshold && films[2].result.in_scope")
            expect(rows.nth(2).locator("td").nth(1)).to_have_class("indeterminate")
            expect(rows.nth(1).locator("td").nth(3)).to_have_text(etiology)  # each film's own second stage
            expect(rows.nth(2).locator("td").nth(3)).to_have_text("no second stage")
            page.get_by_role("button", name=f"show {later.name}").click()
            expect(refusal).to_contain_text("with another card")
            with page.expect_download() as download:
                page.click("#export")
            exported = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        with serving_again(page, create_app(tiny_etiology_bundle)):
            test_page.upload_one(page, small)
            test_page.chosen(page, files=[{"name": "empty.jpeg", "mimeType": "image/jpeg", "buffer": b""}])
            expect(rows).to_have_count(5)
            column = page.get_by_role("button", name="Probability")
            expect(column).to_have_text("Probability")  # of no one class
            for order in ("ascending", "descending"):
                column.click()
                expect(page.locator(f"th[aria-sort={order}]")).to_have_text("Probability")
                cells = page.locator("#films tbody td:nth-child(3)").all_inner_texts()
                assert cells[-1] == "" and rows.nth(4).locator("td").nth(0).inner_text() == "empty.jpeg", cells
                read = [re.fullmatch(r"P\((\w+)\) = ([01]\.\d{3})", cell) for cell in cells[:-1]]
                assert all(read) and [m[1] for m in read] == ["PNEUMONIA"] * 3 + ["virus"], cells
                pneumonia = [float(m[2]) for m in read[:3]]
                assert pneumonia == sorted(pneumonia, reverse=order == "descending"), cells
            for other in ("Reading", "Scope warnings"):  # every column of the reading: the film not read last too
                page.get_by_role("button", name=other).click()
                expect(page.locator("th[aria-sort=ascending]")).to_have_text(other)
                expect(rows.nth(4).locator("td").nth(0)).to_have_text("empty.jpeg")
            with page.expect_download() as download:
                page.click("#export")
            listed = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [line["etiology_label"] for line in exported] == ["", etiology.split()[0], ""]
    # the CSV's positive class of each row is that of the model that read it, as its cell in the list names it
    assert [line["positive"] for line in listed] == [m[1] for m in read] + [""]
    assert listed[3]["model_id"] == load_card(tiny_etiology_bundle).model_id


def test_each_row_of_the_csv_gives_the_classes_of_the_model_that_read_it(page: Page) -> None:
    """The CSV's probability_<class> columns were those of the card loaded: a film read by a three-class model before
    the service restarted with a two-class one lost its classes' probabilities. Each reading gives its own."""
    exported = page.evaluate("""() => {
        const r = (probabilities) => ({ label: 'PNEUMONIA', positive: 'pneumonia', in_scope: true,
            near_threshold: false, probability: 0.8, threshold: 0.5, warnings: [], model_id: 'm', probabilities });
        films.push({ name: 'three.jpeg', status: 'done', result: r({ normal: 0.2, bacteria: 0.7, virus: 0.1 }) },
                   { name: 'two.jpeg', status: 'done', result: r({ NORMAL: 0.2, PNEUMONIA: 0.8 }) });
        return csv(); }""")
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(exported))}
    classes = {name: value for name, value in rows["three.jpeg"].items() if name.startswith("probability_")}
    assert classes == {"probability_normal": "0.2", "probability_bacteria": "0.7", "probability_virus": "0.1"}
    assert all(rows["two.jpeg"][name] == "" for name in classes)


def test_the_lists_words_sort_as_a_reader_orders_them(page: Page) -> None:
    """The list sorted its words by their character codes: "PNEUMONIA" before "bacteria" (every capital before every
    small letter), a positive class "atypical" after "PNEUMONIA", "film10" before "film2", "émile" after "zoe". Each
    column's words sort case-insensitively, in the reader's language, their numbers by value; the CSV in the list's
    order."""
    page.evaluate("""() => {
        const r = (label, positive, probability) => ({ label, positive, probability, in_scope: true,
            near_threshold: false, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {} });
        films.push(...[['film10.jpeg', r('virus', 'virus', 0.9)], ['Zoe.jpeg', r('PNEUMONIA', 'PNEUMONIA', 0.8)],
            ['film1.jpeg', r('bacteria', 'virus', 0.1)], ['émile.jpeg', r('NORMAL', 'PNEUMONIA', 0.2)],
            ['Film2.jpeg', r('typical', 'atypical', 0.3)]].map(([name, result]) => ({ name, result, status: 'done' })));
        renderList(); }""")
    names = page.locator("#films tbody td:nth-child(1)")
    page.get_by_role("button", name="File", exact=True).click()
    expect(names).to_have_text(["émile.jpeg", "film1.jpeg", "Film2.jpeg", "film10.jpeg", "Zoe.jpeg"])
    page.get_by_role("button", name="Reading").click()
    expect(page.locator("#films tbody td:nth-child(2)")).to_have_text(["bacteria", "NORMAL", "PNEUMONIA", "typical",
                                                                       "virus"])
    page.get_by_role("button", name="Probability").click()  # each positive class apart, by name
    expect(page.locator("#films tbody td:nth-child(3)")).to_have_text(
        ["P(atypical) = 0.300", "P(PNEUMONIA) = 0.200", "P(PNEUMONIA) = 0.800", "P(virus) = 0.100",
         "P(virus) = 0.900"])
    listed = names.all_inner_texts()
    with page.expect_download() as download:
        page.click("#export")
    assert [row["path"] for row in csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))] == listed


def test_readings_out_of_scope_follow_the_readings_in_it_either_way(page: Page) -> None:
    """Sorted by reading, "out of scope (NORMAL)" fell between NORMAL and PNEUMONIA (the letters of "out"): a reader
    going down the calls met films the model does not read among them. In either direction the readings in scope come
    first, those out of it after them, as films not read come last."""
    page.evaluate("""() => {
        const r = (label, in_scope) => ({ label, positive: 'PNEUMONIA', probability: 0.5, in_scope,
            near_threshold: false, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {} });
        films.push(...[['a.jpeg', r('PNEUMONIA', false)], ['b.jpeg', r('PNEUMONIA', true)],
            ['c.jpeg', r('NORMAL', false)], ['d.jpeg', r('NORMAL', true)]].map(
            ([name, result]) => ({ name, result, status: 'done' })));
        renderList(); }""")
    readings = page.locator("#films tbody td:nth-child(2)")
    page.get_by_role("button", name="Reading").click()
    expect(readings).to_have_text(["NORMAL", "PNEUMONIA", "out of scope (NORMAL)", "out of scope (PNEUMONIA)"])
    page.get_by_role("button", name="Reading").click()
    expect(readings).to_have_text(["PNEUMONIA", "NORMAL", "out of scope (PNEUMONIA)", "out of scope (NORMAL)"])


def test_a_reading_that_arrives_leaves_the_keyboards_place_in_the_list(page: Page, small: Path,
                                                                       data_root: Path) -> None:
    """Each reading that arrived redrew the list, and a keyboard reader on a film's Show button (going through the
    films read while the others were read) was sent back to the page's start: focus stays on that film's button,
    wherever the list's order puts it."""
    test_page.upload_one(page, small)
    page.get_by_role("button", name="Probability").click()
    page.get_by_role("button", name=f"show {small.name}").focus()
    later = other_film(data_root)
    test_page.chosen(page, later)
    expect(page.get_by_role("button", name=f"show {later.name}")).to_be_enabled()
    expect(page.get_by_role("button", name=f"show {small.name}")).to_be_focused()


def test_a_sorted_columns_name_is_its_title_alone(page: Page) -> None:
    """The arrow drawn after a sorted column's title was part of its name: a screen reader said "Reading black
    up-pointing triangle", then "sorted ascending". The order is said by aria-sort; the arrow is seen only. A sort
    is said as the button is pressed too, in a polite region: aria-sort changed under the button unsaid, and a screen
    reader heard nothing of the list it had just sorted."""
    page.evaluate("""() => { films.push({ name: 'a.jpeg', status: 'done', result: { label: 'NORMAL',
        positive: 'PNEUMONIA', in_scope: true, near_threshold: false, probability: 0.2, threshold: 0.5, warnings: [],
        model_id: 'm', probabilities: {} } });
        renderList(); }""")
    for order in ("ascending", "descending"):
        page.get_by_role("button", name="Reading").click()
        expect(page.get_by_role("columnheader", name="Reading", exact=True)).to_have_attribute("aria-sort", order)
        expect(page.get_by_role("button", name="Reading", exact=True)).to_be_visible()
        expect(page.locator("#list-said")).to_have_text(f"Sorted by Reading, {order}.")
    assert page.get_attribute("#list-said", "aria-live") == "polite"


def test_a_film_over_the_upload_limit_is_told_the_way_out(opener: Page, tiny_bundle: Path) -> None:
    """The page refuses a film over the service's limit before sending it, and said `the file is 0.0954 MB; the
    limit is 0.0625 MB.` and no more, where the service's own 413 says who sets the limit and that a film is smaller
    compressed: the reader at the page was left with nothing to do."""
    page = test_page.open_tab(opener)
    try:
        with contextmanager(run_server)(create_app(tiny_bundle, max_upload_mb=0.0625)) as url:
            page.goto(url)
            expect(page.locator("#card")).to_contain_text(load_card(tiny_bundle).model_id)
            test_page.chosen(page, files=[{"name": "film.dcm", "mimeType": "application/dicom",
                                           "buffer": bytes(100_000)}])
            expect(page.locator("#error")).to_have_text(
                "Rejected: the file is 0.0954 MB; the limit is 0.0625 MB: ask whoever runs the service (serve "
                "--max-upload-mb), or send the film losslessly compressed (a DICOM film in a compressed transfer "
                "syntax).")
    finally:
        page.close()



def test_a_site_readers_format_is_named_and_described_by_the_page(opener: Page, tiny_bundle: Path, small: Path,
                                                                   pgm_reader: readers.Reader) -> None:
    """A site that registered a reader of its own format (tests/test_readers.py's PGM) had its films read by the
    service, but the page named "JPEG, PNG or DICOM" above the file picker and described a PGM film it had read as
    "JPEG/PNG: no DICOM tags". The page learns the formats from the service (/v1/model's film_formats)."""
    page = test_page.open_tab(opener)
    try:
        with contextmanager(run_server)(create_app(tiny_bundle, backend="onnx")) as url:
            page.goto(url)
            expect(page.locator("#formats")).to_have_text("JPEG, PNG, DICOM or PGM")
            test_page.dropped(page, test_readers.pgm(test_readers.film(64, 64)), "film.pgm", "image/x-portable-graymap")
            expect(page.locator("#film")).to_have_text("FormatPGM: no DICOM tags (age, sex, view not known)")
            test_page.dropped(page, small.read_bytes(), small.name, "image/jpeg")
            expect(page.locator("#film-title")).to_have_text(f"Film: {small.name}")
            expect(page.locator("#film")).to_have_text("FormatJPEG/PNG: no DICOM tags (age, sex, view not known)")
    finally:
        page.close()


def test_without_a_site_reader_the_page_names_jpeg_png_and_dicom(page: Page, tiny_bundle: Path, small: Path) -> None:
    expect(page.locator("#card")).to_contain_text(load_card(tiny_bundle).model_id)
    expect(page.locator("#formats")).to_have_text("JPEG, PNG or DICOM")
    test_page.upload_one(page, small)
    expect(page.locator("#film")).to_have_text("FormatJPEG/PNG: no DICOM tags (age, sex, view not known)")


def test_a_probability_is_never_shown_at_its_threshold_when_it_is_not(page: Page, small: Path) -> None:
    """A probability of 0.4625 under a threshold of 0.4627 read "P(PNEUMONIA) = 0.463; threshold 0.463" beside
    NORMAL, and the list gave 0.463 beside the card's threshold of 0.463, as if it had reached it (a second stage's
    too). Shown together, each is given at the decimals that tell them apart; the list, which shows no threshold,
    gives it beside the probability where three decimals do not."""
    test_page.upload_one(page, small)
    page.evaluate("""() => {
        Object.assign(current.result, { label: 'NORMAL', probability: 0.4625, threshold: 0.4627,
                                        near_threshold: false, etiology: null });
        showResult(current); }""")
    expect(page.locator("#probability")).to_have_text(re.compile(r"^P\(PNEUMONIA\) = 0\.4625; threshold 0\.4627; "))
    said = re.compile(rf"^Film: {re.escape(small.name)}\. Reading: NORMAL, probability 0\.4625, threshold 0\.4627, ")
    expect(page.locator("#status")).to_have_text(said)
    assert page.get_attribute("#bar", "aria-valuetext") == "NORMAL: probability 0.4625, threshold 0.4627"
    listed = page.evaluate("""() => {
        const stage = { task: 'etiology', label: 'bacteria', positive: 'virus', probability: 0.30004, threshold: 0.3001,
                        near_threshold: false, in_scope: true, warnings: [] };
        Object.assign(current.result, { label: 'PNEUMONIA', probability: 0.46272, etiology: stage });
        films.push({ name: 'clear.jpeg', status: 'done', readWith: current.readWith,
                     result: { ...current.result, label: 'NORMAL', probability: 0.2, etiology: null } });
        showResult(current);
        renderList();
        return [...document.querySelectorAll('#films tbody tr')].map((row) => [...row.cells].map((c) => c.textContent)
            .slice(0, 4)); }""")
    expect(page.locator("#probability")).to_have_text(re.compile(r"^P\(PNEUMONIA\) = 0\.46272; threshold 0\.46270; "))
    expect(page.locator("#etiology")).to_have_text("Etiology: bacteria (P(virus) = 0.3000, threshold 0.3001)")
    assert listed == [[small.name, "PNEUMONIA", "0.46272, threshold 0.46270",
                       "bacteria (P(virus) = 0.3000, threshold 0.3001)"],
                      ["clear.jpeg", "NORMAL", "0.200", "no second stage"]]


def test_a_second_stage_after_a_first_near_its_threshold_is_indeterminate(page: Page) -> None:
    """A film whose PNEUMONIA lay near its threshold (shown "indeterminate") was handed over, and its second stage's
    "virus" was shown, announced, listed and exported as plainly as after a clear PNEUMONIA: a confident etiology of
    a pneumonia the reading left undecided, from a stage trained on pneumonia films alone, which cannot tell that the
    film may be normal. It is said to be indeterminate, in grey, its reading kept for a reader who knows better."""
    panel, said, listed, exported = page.evaluate("""() => {
        const result = (near) => ({ label: 'PNEUMONIA', positive: 'PNEUMONIA', in_scope: true, near_threshold: near,
            probability: 0.52, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {},
            etiology: { task: 'etiology', label: 'virus', positive: 'virus', probability: 0.7, threshold: 0.5,
                        near_threshold: false, in_scope: true, warnings: [] } });
        films.push({ name: 'near.jpeg', result: result(true), status: 'done' },
                   { name: 'clear.jpeg', result: result(false), status: 'done' });
        renderList();
        const rows = [...document.querySelectorAll('#films tbody tr')].map((row) => [row.cells[0].textContent,
            row.cells[3].textContent]);
        return [[secondLine(films[0].result), secondLine(films[1].result)],
                [announcement(films[0].result), announcement(films[1].result)], rows, csv()];
    }""")
    assert panel == [["Etiology: indeterminate, since PNEUMONIA is itself near its threshold: virus (P(virus) = 0.700, "
                      "threshold 0.500)", "indeterminate"], ["Etiology: virus (P(virus) = 0.700, threshold 0.500)", ""]]
    assert said[0].endswith(" Etiology: indeterminate, since PNEUMONIA is itself near its threshold.")
    assert said[1].endswith(" Etiology: virus.")
    assert dict(listed) == {"near.jpeg": "indeterminate (virus, P(virus) = 0.700)",
                            "clear.jpeg": "virus (P(virus) = 0.700)"}
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(exported))}
    assert rows["near.jpeg"]["etiology"] == "indeterminate (virus)" and rows["clear.jpeg"]["etiology"] == "virus"
    assert rows["near.jpeg"]["etiology_label"] == "virus"  # predict's column, as predict writes it
    colour = page.evaluate("""() => { const line = document.getElementById('etiology');
        line.hidden = false; [line.textContent, line.className] = secondLine(films[0].result);
        return getComputedStyle(line).color; }""")
    assert colour == "rgb(82, 96, 109)"  # the grey of a reading that does not stand


# The film's box in the viewer's pixels, [left, top, right, bottom], as draw lays it (app.js, shownScale)
FILM_BOX = """() => { const c = document.getElementById('view');
    const s = Math.min(c.width / view.w, c.height / view.h) * view.zoom;
    const [x, y] = [c.width / 2 + view.panX, c.height / 2 + view.panY];
    return [x - view.w * s / 2, y - view.h * s / 2, x + view.w * s / 2, y + view.h * s / 2]; }"""


def assert_film_in_view(page: Page) -> None:
    """A quarter of the viewer across and down (or the whole film, where it is smaller) is film."""
    left, top, right, bottom = page.evaluate(FILM_BOX)
    across, down = min(right, 700) - max(left, 0), min(bottom, 520) - max(top, 0)
    assert across >= min(right - left, 700 / 4) - 0.5 and down >= min(bottom - top, 520 / 4) - 0.5, (
        left, top, right, bottom)


def test_the_film_cannot_be_panned_out_of_view(device_opener: test_page.OpenerFor, server: str, page: Page,
                                               small: Path) -> None:
    """A drag, the keys or two fingers moved the film out of the viewer entirely at any zoom: the reader saw an empty
    black box, and the way back was a Reset they might not find. Part of the film stays in view whatever the pan,
    at every zoom; zoomed or panned, the page says how to see it whole, and Fit does."""
    test_page.upload_one(page, small)
    expect(page.locator("#fit-hint")).to_be_hidden()
    # the furthest out, fitted, and in: each arrow key pans 32 viewer pixels, on from where the drag left the film,
    # as far right and up as it may go (4 presses beyond there, each followed by a redraw, fail as 40 would)
    for zoom in (0.25, 1, 3):
        page.evaluate("(zoom) => setZoom(zoom)", zoom)
        test_page.drag(page, 3000, -2000, shift=True)
        assert_film_in_view(page)
        page.focus("#view")
        for _ in range(4):
            page.keyboard.press("Shift+ArrowLeft")
        assert_film_in_view(page)
        for _ in range(4):
            page.keyboard.press("Shift+ArrowDown")
        assert_film_in_view(page)
    expect(page.locator("#fit-hint")).to_be_visible()
    expect(page.locator("#fit-hint")).to_contain_text("Fit (or the 0 key) shows it whole")
    page.get_by_role("button", name="Fit", exact=True).click()
    expect(page.locator("#readout-wl")).to_have_text("level 128, width 255, zoom 1.00x")
    expect(page.locator("#fit-hint")).to_be_hidden()

    with test_page.tab_at(device_opener(test_page.TABLET), server) as tablet:
        cdp = tablet.context.new_cdp_session(tablet)
        test_page.upload_one(tablet, small)
        tablet.locator("#view").scroll_into_view_if_needed()
        box = tablet.locator("#view").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for _ in range(4):  # two fingers moved together, again and again: a pan far past the viewer's edge
            test_page.touches(cdp, *test_page.glide([(x - 20, y), (x + 20, y)], [(300, 200), (300, 200)]))
            assert_film_in_view(tablet)
        assert tablet.evaluate("() => view.panX") > 0


def test_a_reader_moves_through_the_films_by_keys_buttons_and_touch(device_opener: test_page.OpenerFor, server: str,
                                                                     page: Page, small: Path, data_root: Path) -> None:
    """Reading a session of films one after another, the way to the next film was the films list, below the viewer
    (some 4,000 px of it for 35 films), and nothing said which films had been looked at. Previous film and Next film
    (p and n, or Page Up and Page Down, on the viewer) move through the films with a reading in the list's order,
    the place in it said beside them; a locked window stays from film to film; the list marks the film on screen and
    those viewed, and so does the CSV."""
    names = [small.name, "empty.jpeg", other_film(data_root).name, "third.jpeg"]
    buffers = [small.read_bytes(), b"", other_film(data_root).read_bytes(),
               sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[1].read_bytes()]
    test_page.chosen(page, files=[{"name": n, "mimeType": "image/jpeg", "buffer": b}
                                  for n, b in zip(names, buffers)])
    expect(page.locator("#error")).to_contain_text("4 films: 3 read")
    title, place = page.locator("#film-title"), page.locator("#film-place")
    expect(title).to_have_text("Film: third.jpeg")
    expect(place).to_have_text(re.compile(r"^3 of 3 films with a reading: third\.jpeg, (NORMAL|PNEUMONIA)$"))
    page.get_by_role("checkbox", name="Lock window").check()
    page.select_option("#preset", "lung")
    page.focus("#view")
    page.keyboard.press("p")  # the rejected film has no reading to show: passed over
    expect(title).to_have_text(f"Film: {names[2]}")
    expect(place).to_contain_text(f"2 of 3 films with a reading: {names[2]}, ")
    # a screen reader hears where the film lies too, after its reading: it heard each reading and not how far it was
    expect(page.locator("#status")).to_have_text(re.compile(
        rf"^Film: {re.escape(names[2])}\. Reading: .+\. 2 of 3 films with a reading\.$"))
    page.keyboard.press("PageUp")
    expect(title).to_have_text(f"Film: {names[0]}")
    page.evaluate("() => { sayAfterMs = 50; }")  # what a key did is said 50 ms after the keys stop, not 400
    page.keyboard.press("p")  # the first: it stays, and says so
    expect(page.locator("#view-said")).to_have_text("This is the first film with a reading.")
    expect(title).to_have_text(f"Film: {names[0]}")
    page.wait_for_function("() => view.film === films[0]")
    expect(page.locator("#readout-wl")).to_have_text("level 80, width 140, window locked, zoom 1.00x")
    assert page.evaluate("() => document.activeElement.id") == "view"
    page.keyboard.press("PageDown")
    expect(title).to_have_text(f"Film: {names[2]}")
    page.get_by_role("button", name="Previous film").click()
    expect(title).to_have_text(f"Film: {names[0]}")

    rows = page.locator("#films tbody tr")
    expect(rows.nth(0)).to_have_attribute("aria-current", "true")
    assert [rows.nth(i).locator("td").last.inner_text().replace("\n", " ").strip() for i in range(4)] == [
        "Show on screen", "Show", "Show viewed", "Show viewed"]
    page.get_by_role("button", name="Probability").click()  # sorted: the films follow the list's order
    order = [t for t in page.locator("#films tbody td:nth-child(1)").all_inner_texts() if t != "empty.jpeg"]
    page.get_by_role("button", name=f"show {order[0]}").click()
    for name in order[1:]:
        page.get_by_role("button", name="Next film").click()
        expect(title).to_have_text(f"Film: {name}")
    with page.expect_download() as download:
        page.click("#export")
    exported = {r["path"]: r["viewed"] for r in csv.DictReader(io.StringIO(Path(download.value.path()).read_text()))}
    assert exported == {names[0]: "True", "empty.jpeg": "False", names[2]: "True", "third.jpeg": "True"}

    with test_page.tab_at(device_opener(test_page.TABLET), server) as tablet:
        tablet.set_input_files("#file", files=[{"name": n, "mimeType": "image/jpeg", "buffer": b}
                                               for n, b in zip(names[::2], buffers[::2])])
        expect(tablet.locator("#status")).to_have_text("2 films: 2 read, 0 rejected.")
        tablet.get_by_role("button", name="Previous film").tap()
        expect(tablet.locator("#film-title")).to_have_text(f"Film: {names[0]}")


def test_a_film_the_reader_chose_stays_on_screen_while_the_rest_are_read(page: Page, small: Path,
                                                                         data_root: Path) -> None:
    """A reader who started on the first films of a batch while the rest were read was taken to each film as its
    reading came, away from the film they had chosen. Once they choose one (Show, Previous or Next film), the readings
    that follow go to the list, and the film stays on screen."""
    held: list[Route] = []
    page.route(re.compile(r".*/v1/predict$"), lambda route: held.append(route))
    third = sorted((data_root / "train" / "NORMAL").glob("*.jpeg"))[1]
    page.set_input_files("#file", [small, other_film(data_root), third])
    title = page.locator("#film-title")
    for name in (small.name, other_film(data_root).name):  # not chosen yet: each reading is shown as it comes
        while not held:
            page.wait_for_timeout(50)
        held.pop().continue_()
        expect(title).to_have_text(f"Film: {name}")
    page.get_by_role("button", name="Previous film").click()
    expect(title).to_have_text(f"Film: {small.name}")
    settle(page, held)
    expect(page.locator("#status")).to_have_text("3 films: 3 read, 0 rejected.")
    expect(title).to_have_text(f"Film: {small.name}")
    expect(page.locator("#film-place")).to_contain_text(f"1 of 3 films with a reading: {small.name}, ")
    # one film more, and a film chosen while it is read: what became of it is said, its reading having gone to the list
    page.set_input_files("#file", files=[{"name": "fourth.jpeg", "mimeType": "image/jpeg",
                                          "buffer": small.read_bytes()}])
    while not held:
        page.wait_for_timeout(50)
    page.get_by_role("button", name="Next film").click()
    settle(page, held)
    expect(title).to_have_text(f"Film: {other_film(data_root).name}")
    expect(page.locator("#status")).to_have_text(re.compile(r"^fourth\.jpeg: (NORMAL|PNEUMONIA), in the list\.$"))
    page.set_input_files("#file", files=[{"name": "fifth.jpeg", "mimeType": "image/jpeg",
                                          "buffer": small.read_bytes()}])
    while not held:
        page.wait_for_timeout(50)
    page.get_by_role("button", name="Previous film").click()
    held.pop().fulfill(status=422, json={"error": "cannot read the image: truncated"})
    expect(page.get_by_role("alert")).to_have_text("fifth.jpeg: Rejected: cannot read the image: truncated")
    expect(title).to_have_text(f"Film: {small.name}")
    expect(page.locator("#result")).to_be_visible()


def test_the_list_counts_the_films_of_each_kind_at_a_glance(page: Page) -> None:
    """In a list of 35 films, each row some five lines tall, the films called positive, near the threshold, outside
    the model's scope or refused were found by reading every row, and the batch's count of them went with its alert.
    A line above the list counts them, and the films viewed, as the list changes."""
    summary = page.locator("#list-summary")
    page.evaluate("""() => {
        const r = (label, inScope, near) => ({ label, positive: 'PNEUMONIA', in_scope: inScope, near_threshold: near,
            probability: 0.6, threshold: 0.5, warnings: [], model_id: 'm', probabilities: {} });
        const read = (name, result, viewed = false) => ({ name, result, status: 'done', viewed });
        films.push(read('a', r('PNEUMONIA', true, false), true), read('b', r('PNEUMONIA', true, false)),
            read('c', r('NORMAL', true, false), true), read('d', r('PNEUMONIA', true, true)),
            read('e', r('NORMAL', false, false)), { name: 'f', status: 'rejected', error: 'empty', result: null },
            { name: 'g', status: 'unread', error: 'busy', result: null },
            { name: 'h', status: 'waiting', error: null, result: null });
        renderList(); }""")
    expect(summary).to_have_text("8 films: 2 PNEUMONIA, 1 NORMAL, 1 near the threshold, 1 outside the model's scope, "
                                 "1 rejected, 1 not read, 1 waiting; 2 of the 5 with a reading viewed.")
    assert summary.get_attribute("aria-live") is None  # the status says each batch's outcome once


def test_the_warnings_every_film_has_are_said_once_above_the_list(page: Page) -> None:
    """Every JPEG carries the same scope warnings ("no DICOM tags: ...", and from a model without the content check
    "image content: not checked: ..."): in a list of 35 they made each row some five lines tall, and the one film
    with a warning of its own (a CT slice) was found by reading them all. The warnings every film with a reading has
    are said once above the list, and each row gives the rest; the CSV and the panel keep them all."""
    page.evaluate("""() => {
        const r = (warnings) => ({ label: 'NORMAL', positive: 'PNEUMONIA', in_scope: true, near_threshold: false,
            probability: 0.4, threshold: 0.5, warnings, model_id: 'm', probabilities: {} });
        films.push({ name: 'a', status: 'done', result: r(['no tags', 'unchecked']) },
            { name: 'b', status: 'done', result: r(['no tags', 'unchecked', 'CT']) },
            { name: 'c', status: 'rejected', error: 'empty', result: null });
        renderList(); }""")
    expect(page.locator("#list-common")).to_have_text("Every film with a reading has these scope warnings: no tags; "
                                                      "unchecked.")
    assert page.locator("#films tbody td:nth-child(4)").all_inner_texts() == ["none other", "CT", ""]
    rows = list(csv.DictReader(io.StringIO(page.evaluate("() => csv()"))))
    assert [row["warnings"] for row in rows] == ["no tags; unchecked", "no tags; unchecked; CT", ""]
    page.evaluate("() => { films[0].result.warnings = ['unchecked']; renderList(); }")  # a DICOM, say
    expect(page.locator("#list-common")).to_have_text("Every film with a reading has these scope warnings: unchecked.")
    assert page.locator("#films tbody td:nth-child(4)").all_inner_texts() == ["none other", "no tags; CT", ""]
    page.evaluate("() => { films.splice(1, 1); renderList(); }")  # one film: its row says all
    expect(page.locator("#list-common")).to_be_hidden()
    assert page.locator("#films tbody td:nth-child(4)").all_inner_texts() == ["unchecked", ""]


def test_leaving_a_list_not_exported_asks_first(page: Page, opener: Page, small: Path) -> None:
    """The page keeps its films' readings nowhere but in the tab: closed or reloaded before the CSV was exported, a
    session's readings were gone without a word. The browser asks before leaving a list whose CSV has not been saved
    since it last changed, and not once it has, nor after a sort (which changed no reading, and asked again); the CSV
    is named by the time it was saved and the model, where each session's overwrote pneumoscan-readings.csv."""
    asked: list[str] = []
    page.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
    with page.expect_event("close"):
        page.close(run_before_unload=True)  # an empty page: nothing to lose
    assert asked == []
    with test_page.tab_at(opener, page.url) as again:
        again.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
        test_page.upload_one(again, small)
        again.click("#view")  # the browser asks only on a page the reader has used
        with again.expect_event("dialog"):
            again.close(run_before_unload=True)
        assert asked == ["beforeunload"] and not again.is_closed()
        with again.expect_download() as download:
            again.click("#export")
        # a session's CSV is named by the time it was saved and the model that read it, in an order that sorts
        model = "-".join(again.locator("#card dd").nth(i).inner_text() for i in (0, 1)).replace(":", "-")
        assert re.fullmatch(rf"pneumoscan-readings_\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\dZ_{re.escape(model)}\.csv",
                            download.value.suggested_filename), download.value.suggested_filename
        assert again.evaluate("() => csvName(new Date(Date.UTC(2026, 0, 2, 3, 4, 5)))") == (
            f"pneumoscan-readings_2026-01-02_03-04-05Z_{model}.csv")
        again.get_by_role("button", name="Reading", exact=True).click()  # sorted: no reading changed since it was saved
        with again.expect_event("close"):
            again.close(run_before_unload=True)
        assert asked == ["beforeunload"]

"""The user documentation: MkDocs builds it in strict mode (a broken link or anchor fails), and the README stays a
short front page whose links work on a code host."""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import inspect
import io
import itertools
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify
from PIL import Image

from pneumoscan.cli import build_parser
from pneumoscan.core.audit import LISTEN_EVENTS
from pneumoscan.data.cache import IN_PROCESS_FILMS
from pneumoscan.data.scope import CONFLICT
from tests.conftest import _write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
MYPY_CACHE = ROOT / ".cache" / "mypy"  # test_the_python_page_type_checks_against_the_package's
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024
README_MAX_LINES = 118  # about two screens
# A commit hash quoted in the text (`5f14974`), or named after the word commit: history, not documentation.
COMMIT_HASH = re.compile(r"`[0-9a-f]{7,40}`|\bcommit [0-9a-f]{7,40}\b", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# The past told in a user page ("written by an earlier pneumoscan", "Earlier, N tests passed", "the current recipe",
# "a schedule half a step from today's"):
# history belongs in CHANGELOG.md; a page names what a reader can observe (a field, a format, a file) instead.
HISTORY = re.compile(
    r"\b(?:earlier|older|later|newer|previous) (?:pneumoscan|versions?|releases?)\b"
    r"|\bbefore pneumoscan (?:kept|wrote|recorded|checked|had)\b"
    r"|\bpneumoscan (?:now|no longer|used to)\b"
    r"|\b(?:writes|records|checks|refuses|accepts) now\b"
    r"|\bthe current (?:recipe|version|release|export|code)\b"
    r"|(?:^|[.;:] )Earlier, "
    r"|\bpreviously\b"
    r"|\btoday(?:'s)?\b"
    r"|\bby pneumoscan \d+\.\d+",
    re.IGNORECASE | re.MULTILINE,
)


def _mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(project / "mkdocs.yml"),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=120,
    )


def _anchors(markdown_file: Path) -> set[str]:
    """The heading ids MkDocs' toc extension gives a page (headings outside code fences)."""
    text = re.sub(r"^```.*?^```", "", markdown_file.read_text(), flags=re.S | re.M)
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in headings}


def test_mkdocs_strict_build_succeeds(tmp_path: Path) -> None:
    result = _mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert nav, "mkdocs.yml lists no pages"
    for page in nav:
        built = tmp_path / "site" / ("index.html" if page == "index.md" else Path(page).stem + "/index.html")
        assert built.is_file(), f"{page} was not built"


def test_mkdocs_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    """The guard itself: the same configuration refuses a page with a dead link and a dead anchor."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a") as f:
        f.write("\n[gone](no-such-page.md) and [moved](results.md#no-such-heading)\n")
    result = _mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr and "no-such-heading" in result.stderr


def test_readme_is_short_and_has_no_commit_hashes() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move detail into docs/ (limit {README_MAX_BYTES:,})"
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md is {lines} lines; move detail into docs/ (limit {README_MAX_LINES})"
    assert not COMMIT_HASH.findall(README.read_text())


@pytest.mark.parametrize("page", [README, ROOT / "docs" / "index.md"], ids=lambda p: p.name)
def test_the_front_pages_say_how_to_install_and_run_the_tests(page: Path) -> None:
    """`make test` read as a bare command failed for a newcomer: its data path defaults to data/chest_xray, and it
    installs chromium and orthanc with apt-get (root). The MkDocs site had no install steps at all."""
    text = page.read_text()
    assert "make env" in text and "pip install -e ." in text
    (test_line,) = [line for line in text.splitlines() if "make test" in line and line.startswith("PNEUMOSCAN_DATA=")]
    assert "apt-get" in test_line
    assert "root, Debian" in text and "data/chest_xray" in text


def test_the_readme_links_every_page_through_the_index_and_the_ensembles_page() -> None:
    links = set(LINK.findall(README.read_text()))
    assert {"docs/index.md", "docs/ensembles.md", "docs/results.md"} <= links


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_have_no_commit_hashes(page: Path) -> None:
    assert not COMMIT_HASH.findall(page.read_text())


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_user_pages_tell_no_history(page: Path) -> None:
    found = [m.group(0).strip() for m in HISTORY.finditer(page.read_text())]
    assert not found, f"{page.name} tells history (CHANGELOG.md's job): {found}"


def _section(text: str, heading: str) -> str:
    """The text under a ``## heading``, up to the next ``## `` heading."""
    return re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M).group(1)


def test_the_site_carries_the_readme_quick_start() -> None:
    """A reader of the built site alone (the README is not part of it) gets the same quick start, command for
    command."""
    readme = re.findall(r"```bash\n(.*?)```", _section(README.read_text(), "Quick start"), re.S)
    site = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "quickstart.md").read_text(), re.S)
    assert len(readme) == 1 and site, "no quick-start command block"
    assert site[0] == readme[0], "docs/quickstart.md's first command block differs from README.md's quick start"
    assert "quickstart.md" in (ROOT / "mkdocs.yml").read_text()


def test_readme_headline_figures_are_those_of_the_results_page() -> None:
    """The README keeps the headline figures; docs/results.md holds them with the command that made them."""
    results = (ROOT / "docs" / "results.md").read_text()
    rows = [line for line in _section(README.read_text(), "Results").splitlines() if line.startswith("| ")]
    assert len(rows) >= 8, "the README's result tables are gone"
    missing = [row for row in rows if row not in results.splitlines()]
    assert not missing, f"README rows not in docs/results.md: {missing}"


@pytest.mark.parametrize("page", [README, ROOT / "docs" / "index.md", ROOT / "docs" / "reading.md"],
                         ids=lambda p: p.name)
def test_the_figures_of_the_front_pages_are_those_of_the_results_page(page: Path) -> None:
    """A measured figure (0.972, 0.4587) that a front page or the clinicians' page quotes is one docs/results.md
    gives with the command that made it: never a figure of its own."""
    figure = re.compile(r"(?<![\w.])0\.\d{3,}(?!\d)")
    figures = set(figure.findall(page.read_text()))
    assert figures, f"{page.name} quotes no figure: the pattern no longer finds them"
    missing = sorted(figures - set(figure.findall((ROOT / "docs" / "results.md").read_text())))
    assert not missing, f"{page.name} quotes figures docs/results.md lacks: {missing}"


def test_readme_links_are_relative_and_resolve() -> None:
    """README links into docs/ are relative paths (they work on a code host and in a clone), and each target file
    and heading exists."""
    local = [t for t in LINK.findall(README.read_text()) if not t.startswith(("http://", "https://"))]
    assert any(t.startswith("docs/") for t in local), "README links to no docs page"
    for target in local:
        assert not target.startswith("/"), f"absolute link {target}"
        path, _, anchor = target.partition("#")
        assert (ROOT / path).is_file(), f"README links to a missing file: {target}"
        if anchor:
            assert anchor in _anchors(ROOT / path), f"README links to a missing heading: {target}"


def test_anchor_helper_matches_mkdocs() -> None:
    """_anchors must find headings MkDocs links to (a wrong helper would pass any README anchor check vacuously)."""
    anchors = _anchors(ROOT / "docs" / "results.md")
    assert {"official-test-split", "make-demo", "run-to-run-spread"} <= anchors
    assert "no-such-heading" not in anchors


def test_the_python_page_runs_as_written(tmp_path: Path) -> None:
    """docs/python.md's example is the library's front door: it must run as it stands, on any dataset root, saved
    as a script. Run as a file, not with ``python -c``: the image cache decodes in worker processes that import the
    script again (where the machine has more than one core, for more than IN_PROCESS_FILMS films: 80 here), which
    only a ``__main__`` guard survives."""
    data = _write_tiny_dataset(tmp_path / "data", train=40)
    assert 2 * 40 > IN_PROCESS_FILMS
    page = (ROOT / "docs" / "python.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, re.DOTALL))
    assert 'if __name__ == "__main__":' in code, "a script without the guard fails where the cache starts workers"
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PNEUMOSCAN_DATA": str(data), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation AUC" in done.stdout and (tmp_path / "runs/python/eval-val/report.html").is_file()
    with Image.open(tmp_path / "runs/python/heatmap.png") as overlay:
        # the film, the map, the two blended (64 px squares), over the caption that says what the map shows
        assert overlay.width == 3 * 64 and overlay.height > 64, overlay.size


def _sub_commands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Each sub-command's parser (of ``parser``, else a new one), as `pneumoscan SUB-COMMAND --help` prints it."""
    (sub,) = [a for a in (parser or build_parser())._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*(?![\w-])")


@pytest.mark.parametrize("command", sorted(_sub_commands()))
def test_every_option_of_a_command_is_in_its_docs_cli_md_synopsis(command: str) -> None:
    """docs/cli.md's usage block of each sub-command lists exactly its options (the global -q/--quiet and --help are
    documented once, under Global options): options had reached the parser a commit or more before the page named
    them (`audit --augmented-out`, `train --optimizer`, `serve --insecure`), and a newcomer reading the page could
    not find them."""
    section = _section((ROOT / "docs" / "cli.md").read_text(), command)
    synopsis = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M)
    assert synopsis, f"docs/cli.md's `## {command}` has no usage block"
    options = {o for a in _sub_commands()[command]._actions for o in a.option_strings if o.startswith("--")}
    options -= {"--help", "--quiet"}
    documented = set(OPTION.findall(synopsis.group(1)))
    assert not options - documented, f"`{command}` options missing from docs/cli.md: {sorted(options - documented)}"
    assert not documented - options, f"docs/cli.md lists options `{command}` lacks: {sorted(documented - options)}"


def test_the_front_pages_name_every_package_make_test_installs() -> None:
    """docs/index.md named chromium and orthanc only, while `make test` also apt-get installs dicom3tools and dcmtk
    for the DICOM conformance tests: a reader installing by hand, without root for make, missed two."""
    installs = re.findall(r"apt-get install -y -qq ([\w .-]+?) >", (ROOT / "Makefile").read_text())
    packages = {name for line in installs for name in line.split()}
    assert {"chromium", "orthanc", "dcmtk"} <= packages, f"Makefile's apt-get lines not found: {installs}"
    for page in (README, ROOT / "docs" / "index.md"):
        missing = sorted(p for p in packages if f"`{p}`" not in page.read_text())
        assert not missing, f"{page.name} does not name what `make test` installs: {missing}"


def test_the_pages_that_define_in_scope_name_conflicting_tags() -> None:
    """Two tags that contradict each other (the view, the age, a CT object tagged CR) put a film out of scope, as a
    lateral film does; the API page and the predict table described `in_scope` as false for 'no frontal chest
    radiograph' only, so a reader of a frontal film with `in_scope: false` could not tell why."""
    api = (ROOT / "docs" / "api.md").read_text()
    (in_scope,) = [b for b in re.split(r"\n(?=- )", api) if b.startswith("- `in_scope` is")]
    predict = _section((ROOT / "docs" / "cli.md").read_text(), "predict")
    (results,) = [row for row in predict.splitlines() if row.startswith("| results, columns")]
    for text, where in ((in_scope, "api.md's in_scope"), (results.partition("`in_scope` is false")[2], "cli.md")):
        assert f"`{CONFLICT}...`" in text, f"{where} does not say that {CONFLICT!r} warnings make a film out of scope"


def test_the_licence_the_package_declares_ships_with_it() -> None:
    """pyproject.toml says Apache-2.0 and the README says so; the licence's text must be in the repository and named
    for the wheel (setuptools puts license-files into it), as the licence asks of every copy."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert "[LICENSE](LICENSE)" in (ROOT / "README.md").read_text()


NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)(?![\w.])"  # 32, 0.15, 1e-3; not 127.0.0.1
DEFAULT_IN_SYNOPSIS = re.compile(r"(?<![\w-])(--[a-z0-9-]+)[ =]" + NUMBER)
DEFAULT_IN_PROSE = re.compile(r"`(--[a-z0-9-]+)(?: [A-Z]+)?` \([^()]*?default\s+`?" + NUMBER)


def _parser_default(action: argparse.Action) -> float | None:
    """An option's default as `--help` gives it: the parser's own, else the number its help calls the default (a
    default of None is resolved later, by TrainConfig or the serving limits)."""
    if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
        return float(action.default)
    said = re.search(r"default:? " + NUMBER, " ".join((action.help or "").split()))
    return float(said.group(1)) if said else None


@pytest.mark.parametrize("command", sorted(_sub_commands()))
def test_the_defaults_docs_cli_md_gives_are_those_of_help(command: str) -> None:
    """A number docs/cli.md gives an option as its default (`[--max-queue 32]` in a usage block, "`--epochs`
    (default 6)" in the text) is the one `pneumoscan COMMAND --help` gives: a newcomer reads one and gets the other."""
    section = _section((ROOT / "docs" / "cli.md").read_text(), command)
    synopsis = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M).group(1)
    documented = DEFAULT_IN_SYNOPSIS.findall(synopsis) + DEFAULT_IN_PROSE.findall(section)
    actions = {o: a for a in _sub_commands()[command]._actions for o in a.option_strings}
    wrong = {option: (value, _parser_default(actions[option])) for option, value in documented
             if option in actions and _parser_default(actions[option]) != float(value)}
    assert not wrong, f"`{command}` defaults in docs/cli.md (doc, --help): {wrong}"


FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", flags=re.S | re.M)
# A line that starts the program (`pneumoscan train ...`, `time pneumoscan ...`, `PNEUMOSCAN_PLUGINS=m pneumoscan
# ...`, `torchrun ... -m pneumoscan train ...`, `sudo -u pneumoscan /opt/pneumoscan/venv/bin/pneumoscan serve ...`,
# a systemd unit's `ExecStart=`), not a message it prints (`pneumoscan train: error: ...`) nor a sentence naming it.
INVOCATION = re.compile(r"^\s*(?:\$ )?(?:time )?(?:[A-Z_]+=\S* )*(?:.*\s-m |(?:sudo -u \S+ )?(?:ExecStart=)?\S*/)?"
                        r"pneumoscan (?![\w-]*: )(.*)$")
SHELL_END = ("|", "||", "&&", ";", "&", "<", ">", ">>", "2>", "2>&1")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?:\.\.\.)?$")  # BUNDLE, NEW_BUNDLE, S, PATH...


def _doc_command_lines() -> list[tuple[str, bool, str]]:
    """Every `pneumoscan ...` command line of README.md and docs/*.md, and every `train --resume` (a command named
    with its options in a sentence), as (page, whole, line). ``whole`` marks a line of a bash or sh block without an
    ellipsis, which a reader pastes as it stands; the rest (`pneumoscan threshold` in a sentence, a usage block,
    `evaluate ... --split val`) may leave out what the command requires."""
    found, named = [], re.compile(rf"(?:{'|'.join(_sub_commands())}) -")  # `train --resume`, the program unnamed
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for lang, block in FENCE.findall(text):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                if INVOCATION.search(line):
                    found.append((page.name, lang in ("bash", "sh") and "..." not in line, line))
        for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
            span = re.sub(r"(?<=\w)/(?=--)", " ", " ".join(span.split()))  # `audit --figure/--json-out`
            if named.match(span):
                span = f"pneumoscan {span}"
            if INVOCATION.search(span):
                found.append((page.name, False, span))
    return found


def _relaxed(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser with nothing required, for a shortened command line: the options it names must still exist and
    take the values given."""
    for command in _sub_commands(parser).values():
        for action in command._actions:
            action.required = False
            if not action.option_strings:
                action.nargs = {None: "?", "+": "*"}.get(action.nargs, action.nargs)
        for group in command._mutually_exclusive_groups:
            group.required = False
    return parser


def _argvs(line: str, commands: dict[str, argparse.ArgumentParser]) -> list[list[str]]:
    """The arguments a shell would pass for a documented line, up to a comment, pipe or redirection, each placeholder
    value made one the option takes: every alternative of `--split train|val|test`, the default (or 1) for `--seed S`
    or `--data ...`, a registered task for a plugin's `--task`. Usage brackets are dropped, and with them an
    optional repeat (`[DIR ...]`, `[POLICY]`). An option named alone (`predict --dicom-sr --fhir`) is given a value.
    No command where the words after `pneumoscan` are a title or a placeholder (`pneumoscan Grad-CAM overlay`,
    `pneumoscan COMMAND --help`); a lower-case word there is a command, and must be one."""
    either = re.search(r"\[([^][]*) \| ([^][]*)\]", line)  # a usage block's `[--bundle B | --size 192 ...]`
    if either:
        return [argv for option in either.groups()
                for argv in _argvs(f"{line[: either.start()]}[{option}]{line[either.end():]}", commands)]
    match = INVOCATION.search(line)
    plugins = "PNEUMOSCAN_PLUGINS=" in line[: match.start(1)]
    words: list[str] = []
    for word in shlex.split(match.group(1), comments=True):
        if word in SHELL_END or word.startswith((">", "2>")):
            break
        if not (word.startswith("[") and PLACEHOLDER.match(word.strip("[]")) or word == "...]"):
            words.append(word.strip("[]"))
    command = next((w for w in words if not w.startswith("-")), None)
    if command is not None and command not in commands and not command.islower():
        return []
    actions = {o: a for a in commands[command]._actions for o in a.option_strings} if command in commands else {}
    choices: list[list[str]] = []
    i = 0
    while i < len(words):
        word, action = words[i], actions.get(words[i])
        choices.append([word] if word != "..." else [])  # `...`: the rest of the line, or an option's value
        i += 1
        if action is None or action.nargs == 0:
            continue
        value = words[i] if i < len(words) and not words[i].startswith("-") else None
        if value is not None and value != "..." and not PLACEHOLDER.match(value) and "|" not in value and not (
                plugins and word == "--task"):
            continue  # a real value: the next word, as it stands
        i += value is not None
        said = [w for w in (value or "").split("|") if w and w != "..." and not PLACEHOLDER.match(w)]
        default = action.default if isinstance(action.default, (str, int, float)) else 1
        choices.append([] if plugins and word == "--task" else said)
        choices[-1] = choices[-1] or [next(iter(action.choices)) if action.choices else str(default)]
    return [list(argv) for argv in itertools.product(*(c for c in choices if c))]


def _parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """What the parser says of the arguments (its error line), or None where it takes them."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else said.getvalue().strip().splitlines()[-1]
    return None


def test_every_command_line_in_the_docs_parses() -> None:
    """Each `pneumoscan ...` line of the README and docs/ is one the real parser takes: a reader who pastes it gets
    the command run, not `unrecognized arguments` for an option renamed or an option value the command lacks. Whole
    lines of bash blocks are parsed as they stand; shortened ones with nothing required."""
    lines = _doc_command_lines()
    assert len(lines) > 100, f"found only {len(lines)} command lines: the pattern no longer finds them"
    strict, relaxed = build_parser(), _relaxed(build_parser())
    commands = _sub_commands(strict)
    wrong = {f"{page}: {line}\n    {error}": None for page, whole, line in lines for argv in _argvs(line, commands)
             if (error := _parse_error(strict if whole else relaxed, argv))}
    assert not wrong, "command lines the parser refuses:\n" + "\n".join(wrong)


def test_the_proxy_variables_pacs_follows_are_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pacs` reaches the PACS through `requests`, which follows HTTP_PROXY/HTTPS_PROXY: on a server with a proxy
    for its internet access, every film and report went through that proxy, and no page said so or named
    NO_PROXY. Here a loopback proxy receives a search; the pages name the variables."""
    import http.server
    import threading

    from pneumoscan.interop.dicomweb import _session

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.requestline)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    proxy = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    # shutdown() waits for the loop to look again: 0.5 s between looks by default
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url, session = _session("http://pacs.hospital.invalid/dicom-web", None)
        assert session.get(f"{url}/studies", timeout=10).status_code == 204
    finally:
        proxy.shutdown()
    assert seen == ["GET http://pacs.hospital.invalid/dicom-web/studies HTTP/1.1"]
    for page in ("dicom.md", "cli.md", "deployment.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "HTTPS_PROXY" in text and "NO_PROXY" in text, f"docs/{page} does not say pacs follows the proxy"


def test_the_models_docs_cli_md_lists_are_those_registered() -> None:
    """`## models` names what `pneumoscan models` prints: a model registered but not named there could not be found
    on the page, one named but gone would be refused by `train --model`."""
    from pneumoscan.models.registry import list_models

    section = _section((ROOT / "docs" / "cli.md").read_text(), "models")
    (names,) = re.findall(r"registered model names \(([^)]*)\)", section)
    assert re.findall(r"`([\w-]+)`", names) == list_models()


def test_the_fhir_filing_example_uses_the_observations_identifier_system() -> None:
    """docs/dicom.md's conditional update finds the Observation by the identifier system pneumoscan writes; another
    system in the query would create a second Observation on every rerun instead of replacing the first."""
    from pneumoscan.interop.fhir import URI

    lines = (ROOT / "docs" / "dicom.md").read_text().splitlines()
    (put,) = [line for line in lines if line.lstrip().startswith('"https://') and "Observation?identifier=" in line]
    assert f"identifier={URI}%7C$id" in put


def test_every_set_the_docs_give_is_a_setting_train_takes() -> None:
    """`--set KEY=VALUE` passes the parser whatever it holds, and the key and value are judged when the config is
    made: a page's `--set` of a renamed setting, or a value of the wrong type, would parse (the command-line test
    above) and then be refused. A placeholder value (`workers=N`) is given the setting's default."""
    from pneumoscan.training.config import TrainConfig, load_config

    settings = {(page.name, kv) for page in [README, *sorted((ROOT / "docs").glob("*.md"))]
                for kv in re.findall(r"--set ([\w.]+=[^\s`)]+)", page.read_text())}
    assert len(settings) > 10, "found too few --set settings: the pattern no longer finds them"
    wrong = []
    for page, setting in sorted(settings):
        key, _, value = setting.partition("=")
        if key == "KEY":  # the usage blocks' `--set KEY=VALUE`
            continue
        if PLACEHOLDER.match(value):
            value = str(functools.reduce(getattr, key.split("."), TrainConfig()))
        try:
            load_config(None, [f"{key}={value}"])
        except ValueError as e:
            wrong.append(f"{page}: --set {setting}: {e}")
    assert not wrong, "\n".join(wrong)


def test_the_repository_files_the_docs_name_exist() -> None:
    """A config, notebook, benchmark, module or unit a page names (`configs/reference/cnn1-augment.yaml`,
    `benchmarks/bench_shift.py`, `deploy/pneumoscan.service`) is in the repository: a reader runs or opens it as
    written."""
    file = re.compile(r"\b(?:configs|notebooks|benchmarks|tests|pneumoscan|deploy)/[\w./-]+"
                      r"\.(?:yaml|ipynb|py|service)\b")
    named = {(page.name, path) for page in [README, *sorted((ROOT / "docs").glob("*.md"))]
             for path in file.findall(page.read_text())}
    assert len(named) > 20, "found too few file names: the pattern no longer finds them"
    missing = sorted(f"{page}: {path}" for page, path in named
                     if not (ROOT / path).is_file() and not PLACEHOLDER.match(Path(path).stem))
    assert not missing, f"pages name files the repository lacks: {missing}"


def test_the_systemd_unit_deployment_md_quotes_is_the_one_shipped() -> None:
    """docs/deployment.md quotes deploy/pneumoscan.service whole, and tests/test_systemd_unit.py has systemd check
    that file: a line changed in one copy alone would have readers install a unit nothing checked."""
    section = _section((ROOT / "docs" / "deployment.md").read_text(), "Running under systemd")
    (quoted,) = [block for lang, block in FENCE.findall(section) if lang == "ini"]
    assert quoted == (ROOT / "deploy" / "pneumoscan.service").read_text()


def test_the_host_names_deployment_md_says_to_give_are_matched_without_their_port() -> None:
    """docs/deployment.md says to give --allowed-hosts names without a port, since the Host header's port is not
    compared: a request to the name with a port passes, and a name given with its port is refused."""
    from pneumoscan.serving.guard import Access, _host_allowed

    page = (ROOT / "docs" / "deployment.md").read_text()
    assert "Give names without a port" in page and "refuses a name given with one" in page
    assert _host_allowed("xray.hospital.example:8443", ("xray.hospital.example",))
    with pytest.raises(ValueError, match="without a port"):
        Access(allowed_hosts=("xray.hospital.example:8443",))


DOTTED = re.compile(r"(?<![\w/.])pneumoscan(?:\.[A-Za-z_]\w*)+")
CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(")


def _resolved(name: str) -> object | None:
    """What a dotted name (`pneumoscan.training.cv.cross_validate`) is: the longest module it starts with, then its
    attributes; None when there is none."""
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            return functools.reduce(getattr, parts[i:], importlib.import_module(".".join(parts[:i])))
        except (ImportError, AttributeError):
            continue
    return None


def _top_level(args: str) -> list[str]:
    """A call's arguments as written, split at the commas outside brackets."""
    parts, depth, part = [], 0, ""
    for ch in args:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and not depth:
            parts, part = [*parts, part.strip()], ""
        else:
            part += ch
    return [*parts, part.strip()] if part.strip() else parts


def _calls(span: str) -> Iterator[tuple[str, str]]:
    """Each call in a code span, `name(arguments)`, nested ones too."""
    for m in CALL.finditer(span):
        depth, end = 1, m.end()
        while end < len(span) and depth:
            depth += {"(": 1, ")": -1}.get(span[end], 0)
            end += 1
        if not depth:
            yield m.group(1), span[m.end():end - 1]


def _named_here(text: str) -> dict[str, object]:
    """The pneumoscan callables a page's calls can mean, by the name it calls them: each one it names by its dotted
    path or imports in an example, and the public ones of each module it names (`Access` "from
    `pneumoscan.serving.guard`")."""
    named: dict[str, object] = {}
    for dotted in DOTTED.findall(text):
        if inspect.ismodule(found := _resolved(dotted)):
            named.update({n: o for n, o in vars(found).items() if callable(o) and not n.startswith("_")
                          and getattr(o, "__module__", "").startswith("pneumoscan")})
            named.setdefault(dotted.rsplit(".", 1)[1], found)  # `pixels.reduce(...)`
    for dotted in DOTTED.findall(text):
        if callable(found := _resolved(dotted)):
            named[dotted.rsplit(".", 1)[1]] = found
    for module, names in re.findall(r"^\s*from (pneumoscan[\w.]*) import ([\w, ]+)$", text, re.M):
        named.update({n.strip(): _resolved(f"{module}.{n.strip()}") for n in names.split(",")})
    return named


def _named(name: str, callables: dict[str, object]) -> object | None:
    """What a name a page calls means: a dotted path, or a name the page defines (_named_here) and its attributes."""
    head, *attributes = name.split(".")
    if head == "pneumoscan":
        return _resolved(name)
    return functools.reduce(lambda found, attribute: getattr(found, attribute, None), attributes, callables.get(head))


def _shown_calls(text: str) -> Iterator[tuple[str, str, object]]:
    """Each call of a pneumoscan callable that a page shows in its text, outside its examples (which run): its name
    as written, its arguments as written, and the callable (a function named, `fit()`, or not pneumoscan's,
    `np.asarray(...)`, is none)."""
    callables = _named_here(text)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose):
        for name, args in _calls(" ".join(span.split())):
            function = _named(name, callables)
            if args and callable(function) and not inspect.ismodule(function):
                yield name, args, function


def test_every_pneumoscan_name_the_docs_give_exists_and_takes_the_arguments_shown() -> None:
    """A module, function or constant a page names by its dotted path (`pneumoscan.interop.fhir.CODE_SYSTEM`,
    `pneumoscan.training.cv.cross_validate`) can be imported as written; and a call a page shows in its text
    (`rethreshold(BUNDLE, DATA, OUT, split=..., target_sensitivity=S)`, `train(..., callbacks=[...])`), which no
    example runs, takes those arguments: as many positional ones, each keyword by its name (`...` standing for the
    rest; `fit()` names a function)."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    named = {(page.name, name) for page in pages for name in DOTTED.findall(page.read_text())}
    assert len(named) > 20, "found too few dotted names: the pattern no longer finds them"
    missing = [f"{page}: {name}" for page, name in sorted(named) if _resolved(name) is None]
    assert not missing, f"pages name what pneumoscan lacks: {missing}"
    checked, wrong = 0, []
    for page in pages:
        for name, args, function in _shown_calls(page.read_text()):
            given = _top_level(args)
            keywords = {a.split("=", 1)[0].strip() for a in given if re.match(r"\w+=(?!=)", a)}
            positional = [a for a in given if a != "..." and a.split("=", 1)[0].strip() not in keywords]
            bind = inspect.signature(function).bind_partial if "..." in given else inspect.signature(function).bind
            try:
                bind(*positional, **dict.fromkeys(keywords))
            except TypeError as e:
                wrong.append(f"{page.name}: `{name}({args})`: {e}")
            checked += 1
    assert checked > 15, f"checked {checked} calls: the pattern no longer finds them"
    assert not wrong, "pages show calls pneumoscan does not take:\n" + "\n".join(wrong)


class _AsPython(ast.NodeTransformer):
    """A call as a page shows it, as Python a type checker reads: a name the page does not define (`BUNDLE`,
    `folds`) and `...` for a value are `ANY`, a value of any type; a bare `...` for the rest of the arguments gives
    each parameter without a default that the call leaves out, by its name."""

    def __init__(self, callables: dict[str, object]) -> None:
        self.callables = callables

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return node if node.id in self.callables or node.id == "pneumoscan" else ast.Name("ANY")

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        return ast.Name("ANY") if node.value is Ellipsis else node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        rest = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in node.args)
        node.args = [a for a in node.args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
        self.generic_visit(node)
        function = _named(ast.unparse(node.func), self.callables)
        if rest and callable(function):
            given = {k.arg for k in node.keywords}
            left = list(inspect.signature(function).parameters.values())[len(node.args):]
            node.keywords += [ast.keyword(p.name, ast.Name("ANY")) for p in left if p.default is p.empty
                              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in given]
        return node


def _python_page_script() -> tuple[str, list[str]]:
    """docs/python.md as a user's script: its example as it stands, then, in a function, each call its text shows
    (`rethreshold(BUNDLE, DATA, OUT, split=..., target_sensitivity=S)`) as Python (_AsPython), with the imports of
    what they call; and those calls."""
    page = (ROOT / "docs" / "python.md").read_text()
    callables = _named_here(page)
    calls = [ast.unparse(_AsPython(callables).visit(ast.parse(f"{name}({args})", mode="eval").body))
             for name, args, _ in _shown_calls(page)]
    imports = {"from typing import Any"}
    for name in {n.split(".")[0] for call in calls for n in CALL.findall(call)} - {"pneumoscan"}:
        found = callables[name]
        imports.add(f"import {found.__name__} as {name}" if inspect.ismodule(found)
                    else f"from {found.__module__} import {name}")
    for dotted in {d for call in calls for d in DOTTED.findall(call)}:
        found = _resolved(dotted)
        imports.add(f"import {found.__name__ if inspect.ismodule(found) else found.__module__}")
    body = [*sorted(imports), "ANY: Any = None", *calls]
    example = "\n".join(re.findall(r"```python\n(.*?)```", page, re.DOTALL))
    return example + "\n\ndef the_calls_its_text_shows() -> None:\n" + "".join(f"    {line}\n" for line in body), calls


# Packages mypy is not to read for the check below: no annotation of pneumoscan's can name their types (pneumoscan
# imports mlflow and huggingface_hub inside functions alone, IPython and ONNX's Python packages not at all: rich and
# matplotlib import IPython for notebooks, torch.onnx imports onnx, onnxscript and onnx_ir), yet mypy followed them:
# 1,640 modules for mlflow and IPython (mlflow's SQLAlchemy, OpenTelemetry and Databricks SDK among them, 7 s of its
# 26 s of CPU), 624 more for the others (3,402 -> 2,778 modules, 2-2.7 s of its 18-21 s). Each stays Any where it
# is imported. Nor redis (imported inside functions alone), cryptography, OpenTelemetry or markdown_it, which
# pneumoscan never imports (redis, urllib3, starlette and rich do): 310 modules more.
NOT_READ_BY_MYPY = ("mlflow", "IPython", "onnx", "onnxscript", "onnx_ir", "huggingface_hub", "redis", "cryptography",
                    "opentelemetry", "markdown_it")
# torch's compiler, graph, export, quantization and profiling stacks, which pneumoscan never names (neither imported
# nor reached as torch's attributes), so none of its annotations can hold their types; torch's own modules import
# them, and mypy read them: 880 of its 2,900 modules, 5 s of its 16 s of CPU. Each stays Any where torch names it.
# So too torch.distributed's sharding, FSDP, DTensor and RPC stacks (pneumoscan names torch.distributed alone), the
# ONNX exporter's internals and torch's reference, masked, subclass and quantization layers: 270 modules more.
TORCH_NOT_READ_BY_MYPY = ("torch._inductor", "torch._dynamo", "torch.fx", "torch._functorch", "torch._higher_order_ops",
                          "torch.ao", "torch._export", "torch.export", "torch.package", "torch.profiler",
                          "torch.testing", "torch._numpy", "torch.distributions", "torch.distributed.tensor",
                          "torch.distributed._shard", "torch.distributed.fsdp", "torch.distributed.algorithms",
                          "torch.distributed.rpc", "torch.distributed._tools", "torch.distributed.nn",
                          "torch.distributed._pycute", "torch.distributed._composable",
                          "torch.distributed._local_tensor", "torch._native", "torch.onnx._internal",
                          "torch.quantization", "torch.masked", "torch._refs", "torch._subclasses")


def _imported_outside_functions(packages: tuple[str, ...]) -> list[str]:
    """Where pneumoscan's modules import one of ``packages`` outside a function's body (at module level, under
    TYPE_CHECKING, in a class body), where an annotation could name its types. Each module is parsed once for all
    of them (once each cost 0.25 s of CPU a package)."""
    found = []
    for path in sorted((ROOT / "pneumoscan").rglob("*.py")):
        todo: list[ast.AST] = [ast.parse(path.read_text())]
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                          if any(n == package or n.startswith(f"{package}.") for package in packages)]
            todo += [child for child in ast.iter_child_nodes(node)
                     if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
    return found


def test_the_python_page_type_checks_against_the_package(tmp_path: Path) -> None:
    """An engineer who type-checks a script gets pneumoscan's annotations (PEP 561's marker, pneumoscan/py.typed,
    which the wheel ships) and they hold: mypy --strict finds no error in docs/python.md as a user's script, its
    example and each call its text shows. mypy reads the package as it reads one installed, reporting no error inside
    it, and all it imports but NOT_READ_BY_MYPY and TORCH_NOT_READ_BY_MYPY. About 10 s of CPU, most of it reading
    torch's and numpy's annotations, 0.3 s once MYPY_CACHE holds them; `make typecheck` runs it alone."""
    script, calls = _python_page_script()
    assert len(calls) > 8, f"found {len(calls)} calls on the page: the pattern no longer finds them"
    assert not (imported := _imported_outside_functions(NOT_READ_BY_MYPY)), (
        f"{imported}: imported where an annotation can name its types: mypy must read it (NOT_READ_BY_MYPY)")
    named = re.compile(rf"\b({'|'.join(map(re.escape, TORCH_NOT_READ_BY_MYPY))})\b")
    for path in sorted((ROOT / "pneumoscan").rglob("*.py")):
        assert not (found := named.search(path.read_text())), (
            f"{path.relative_to(ROOT)} names {found.group()}: mypy must read it (TORCH_NOT_READ_BY_MYPY)")
    (tmp_path / "example.py").write_text(script)
    (tmp_path / "mypy.ini").write_text("[mypy]\n" + "".join(f"[mypy-{package}.*]\nfollow_imports = skip\n"
                                                             for package in NOT_READ_BY_MYPY + TORCH_NOT_READ_BY_MYPY))
    # mypy's incremental cache, kept between runs beside the other tools' (.cache/, which git ignores): a run whose
    # torch, numpy and pneumoscan files are those of the run before reads their checked annotations back (0.3 s of
    # CPU, where reading them costs 13 s); mypy checks again each module whose file changed, and those that import it
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", f"--cache-dir={MYPY_CACHE}", "example.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{done.stdout[-3000:]}{done.stderr[-3000:]}\n{script}"


def test_docs_api_md_names_every_field_the_service_answers(tiny_bundle: Path, tiny_dataset: Path) -> None:
    """An integrator reads docs/api.md for what `/v1/model` and `/v1/predict` answer: each field the service sends
    (the card's, its validation figures', a reading's) is named under its endpoint."""
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    api = (ROOT / "docs" / "api.md").read_text()
    film = next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))
    with TestClient(create_app(tiny_bundle)) as client:
        card = client.get("/v1/model").json()
        reading = client.post("/v1/predict", files={"file": ("film.jpeg", film.read_bytes(), "image/jpeg")}).json()
    for section, fields in ((_section(api, "`GET /v1/model`"), [*card, *card["val_metrics"]]),
                            (_section(api, "`POST /v1/predict`"), reading)):
        named = set(re.findall(r'`"?(\w+)"?`|"(\w+)":', section))
        named = {name for pair in named for name in pair if name}
        assert not sorted(set(fields) - named), f"api.md does not name {sorted(set(fields) - named)}"


def test_the_413_the_pages_quote_is_the_services(tiny_bundle: Path) -> None:
    """A film over the upload limit is answered with what the sender can do (the limit is serve's --max-upload-mb;
    a lossless compressed DICOM is smaller): docs/dicom.md quotes the service's answer, and docs/deployment.md's nginx
    example answers the bodies nginx refuses itself with the same JSON."""
    from fastapi.testclient import TestClient

    from pneumoscan.serving.app import create_app

    with TestClient(create_app(tiny_bundle)) as client:  # the default limit, 20 MB, which the pages quote
        r = client.post("/v1/predict", files={"file": ("film.dcm", bytes(21 * 2**20), "application/dicom")})
    said = r.json()["error"]
    assert r.status_code == 413 and "--max-upload-mb" in said and "lossless" in said, said
    assert f"`{said}`" in " ".join((ROOT / "docs" / "dicom.md").read_text().split())
    assert f"return 413 '{json.dumps(r.json())}\\n';" in (ROOT / "docs" / "deployment.md").read_text()


def test_the_hung_bundle_reason_deployment_md_quotes_is_the_services() -> None:
    """docs/deployment.md quotes /healthz's reason for a bundle folder that does not answer, and its wait, as the
    service says them."""
    from pneumoscan.models.on_disk import BUNDLE_WAIT_S
    from pneumoscan.serving.service import BUNDLE_SILENT

    page = " ".join((ROOT / "docs" / "deployment.md").read_text().split())
    assert f"`{BUNDLE_SILENT.format(BUNDLE_WAIT_S)}`" in page and f"at most {BUNDLE_WAIT_S:g} seconds" in page


def test_predicts_columns_are_those_docs_cli_md_lists_in_its_order(tiny_bundle: Path, tiny_dataset: Path,
                                                                     tmp_path: Path) -> None:
    """docs/cli.md's `predict` row lists the results' columns, the optional ones in brackets, in the file's order:
    a script written from the page reads the real file (here a film read, with its heatmap, and a file that cannot
    be read: a path not there is refused, no row)."""
    from pneumoscan import cli

    predict = _section((ROOT / "docs" / "cli.md").read_text(), "predict")
    (listed,) = re.findall(r"^\| results, columns `([^`]*)`", predict, flags=re.M)
    documented = [c.strip() for c in re.split(r"[\[\],]", re.sub(r"\([^()]*\)", "", listed)) if c.strip()]
    film = next((tiny_dataset / "test" / "NORMAL").glob("*.jpeg"))
    out = tmp_path / "results.csv"
    (tmp_path / "broken.jpeg").write_bytes(b"not a film")
    cli.main(["-q", "predict", str(tiny_bundle), str(film), str(tmp_path / "broken.jpeg"), "--heatmaps",
              str(tmp_path / "maps"), "--out", str(out)])
    header = out.read_text().splitlines()[0].split(",")
    assert {"path", "probability", "label", "heatmap", "error", "warnings", "in_scope"} <= set(header), header
    assert not set(header) - set(documented), f"columns docs/cli.md does not list: {set(header) - set(documented)}"
    assert header == [c for c in documented if c in header], f"docs/cli.md lists another order than {header}"


def test_the_wheel_the_install_steps_name_is_the_version_being_built() -> None:
    """docs/deployment.md installs `dist/pneumoscan-VERSION-py3-none-any.whl` by name: a version other than
    pyproject.toml's names a file `pip wheel` did not make, and the copied command fails on the server."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheels = re.findall(r"pneumoscan-([\w.]+)-py3-none-any\.whl", (ROOT / "docs" / "deployment.md").read_text())
    assert wheels and set(wheels) == {version}, (wheels, version)


SERVICE = "http://127.0.0.1:8000"  # where the pages' curl lines reach the service the quick start starts
BOOLEAN = {"true", "false", "1", "0", "yes", "no", "on", "off"}  # what FastAPI reads as a bool


def _service_curl_lines() -> list[tuple[str, str]]:
    """Every curl command line of README.md and docs/*.md that asks the service something, in a code block or a
    backtick span, as (page, line)."""
    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        lines = [line for _, block in FENCE.findall(text) for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
        lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
        found += [(page.name, line.strip()) for line in lines if line.strip().startswith("curl ") and SERVICE in line]
    return found


def _takes(schema: dict, value: str, components: dict) -> bool:
    """Whether a query parameter of this OpenAPI schema takes the value as written in a URL."""
    if "$ref" in schema:
        return _takes(components[schema["$ref"].rpartition("/")[2]], value, components)
    if "anyOf" in schema:
        return any(_takes(s, value, components) for s in schema["anyOf"])
    if "const" in schema or "enum" in schema:
        return value in schema.get("enum", [schema.get("const")])
    return value in BOOLEAN if schema.get("type") == "boolean" else True


def test_every_curl_line_in_the_docs_asks_what_the_service_answers(tiny_bundle: Path) -> None:
    """A curl line of the README or docs/ names a path the service serves, with the method curl sends, and query
    parameters `/openapi.json` lists with values they take; a URL with a query is quoted, as a shell such as zsh
    (macOS's) reads an unquoted `?` as a file pattern and runs nothing (`no matches found`). The command-line test
    above parses `pneumoscan ...` lines only: the README's `?heatmap=true` was a fragment a reader had to place. So
    does each row of docs/api.md's endpoint table, with the `?option=value` its words give."""
    import urllib.parse

    from pneumoscan.serving.app import create_app

    schema = create_app(tiny_bundle).openapi()
    components = schema.get("components", {}).get("schemas", {})
    lines = _service_curl_lines()
    assert len(lines) >= 8, f"found only {len(lines)} curl lines: the pattern no longer finds them"
    wrong = []
    for page, line in lines:
        words = shlex.split(line, comments=True)
        (url,) = [w for w in words if w.startswith(SERVICE + "/")]
        parts = urllib.parse.urlsplit(url)
        method = words[words.index("-X") + 1] if "-X" in words else "POST" if "-F" in words else "GET"
        operation = schema["paths"].get(parts.path, {}).get(method.lower())
        if operation is None:
            wrong.append(f"{page}: {line}\n    the service has no {method} {parts.path}")
            continue
        params = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "query"}
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key not in params or not _takes(params[key], value, components):
                wrong.append(f"{page}: {line}\n    {parts.path} does not take {key}={value} ({sorted(params)})")
        if parts.query and f"'{url}'" not in line and f'"{url}"' not in line:
            wrong.append(f"{page}: {line}\n    the URL holds a ? and is not quoted")
    assert not wrong, "curl lines the service would not answer as written:\n" + "\n".join(wrong)
    # docs/api.md's endpoint table: each method and path is served, each `?option=value` of /v1/predict taken
    from fastapi.testclient import TestClient

    table = _section((ROOT / "docs" / "api.md").read_text(), "Endpoints")
    rows = re.findall(r"^\| `(GET|POST|HEAD) (/[^`]*)`(?: \(or `(HEAD)`\))? \|.*?\| (.*) \|$", table, re.M)
    assert len(rows) >= 5, f"found {len(rows)} rows of api.md's endpoint table: the pattern no longer finds them"
    predict = {p["name"]: p["schema"] for p in schema["paths"]["/v1/predict"]["post"]["parameters"]}
    with TestClient(create_app(tiny_bundle)) as client:
        for method, path, head, does in rows:
            for asked in filter(None, (method, head)):
                if asked != "POST" and client.request(asked, path).status_code in (404, 405):
                    wrong.append(f"api.md: the service does not answer {asked} {path}")
            if method == "POST" and "post" not in schema["paths"].get(path, {}):
                wrong.append(f"api.md: the service has no POST {path}")
            for key, value in re.findall(r"`\?(\w+)=([\w-]+)`", does):
                if path != "/v1/predict" or key not in predict or not _takes(predict[key], value, components):
                    wrong.append(f"api.md: {path} does not take {key}={value}")
    assert not wrong, "api.md's endpoint table names what the service does not serve:\n" + "\n".join(wrong)


ADD = re.compile(r"^\s*#.*?\badd ((?:--[\w-]+(?: [^-\s#]\S*)? ?)+)$")  # `# ... add --model simple_cnn --epochs 1`


def test_the_options_a_comment_says_to_add_parse_with_the_command_under_it() -> None:
    """The quick start's smoke test is a comment over step 2, `add --model simple_cnn --no-pretrained --image-size 32
    --epochs 1`: the command-line test above reads the `pneumoscan ...` lines, not the comments, so an option renamed
    there would go on being given to every newcomer. Added to the next command of its block, the line parses."""
    strict = build_parser()
    commands = _sub_commands(strict)
    found, wrong = [], []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for _, block in FENCE.findall(page.read_text()):
            lines = re.sub(r"\\\n\s*", " ", block).splitlines()
            for i, line in enumerate(lines):
                if said := ADD.match(line):
                    command = next(c for c in lines[i + 1:] if c.strip() and not c.lstrip().startswith("#"))
                    found.append(page.name)
                    wrong += [f"{page.name}: {command} + {said.group(1)}\n    {error}"
                              for argv in _argvs(f"{command} {said.group(1)}", commands)
                              if (error := _parse_error(strict, argv))]
    assert {"README.md", "quickstart.md"} <= set(found), f"the smoke test's comment is not found: {found}"
    assert not wrong, "options a comment says to add that the command refuses:\n" + "\n".join(wrong)


BENCHMARK = re.compile(r"(python )?(?:\bbenchmarks/|cd benchmarks && python )(\w+\.py)\b(.*)")  # run, script, args


class _Parser(Exception):
    """Raised in place of parsing, carrying the parser a benchmark's main() built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _benchmark_parser(script: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser the script builds when run: its main() is run up to the parse, which is stopped there."""
    def stop(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parser(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
        patch.setattr(sys, "argv", [script])
        patch.syspath_prepend(str(ROOT / "benchmarks"))  # as running the script puts its folder first
        with pytest.raises(_Parser) as stopped:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    return stopped.value.parser


def test_every_benchmark_line_in_the_docs_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A results figure's `python benchmarks/bench_x.py ...` line, and the Makefile's that `make demo` and `make bench`
    run, is one the script's own parser takes: a reader who reruns it gets the measurement, not `unrecognized
    arguments` for an option the script renamed (the command-line test above reads `pneumoscan ...` lines only). Its
    arguments end at a shell operator, a comment or a `--` (after which bench_abuse.py passes `serve` options on);
    usage brackets are dropped, and a script named without `python` or arguments is a name in a sentence."""
    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile"]:
        text = page.read_text()
        lines = [line for _, block in FENCE.findall(text) for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
        spans = re.findall(r"`([^`]+)`", FENCE.sub("", text)) if page.suffix == ".md" else text.splitlines()
        for span in lines + spans:
            if match := BENCHMARK.search(" ".join(span.split())):
                run, script, rest = match.groups()
                found.append((page.name, f"benchmarks/{script}", rest, bool(run) or "cd benchmarks" in match[0]))
    assert len(found) > 40, f"found only {len(found)} benchmark lines: the pattern no longer finds them"
    parsers = {script: _benchmark_parser(script, monkeypatch) for script in sorted({s for _, s, _, _ in found})}
    wrong = []
    for page, script, rest, run in found:
        argv = [w.strip("[]") for w in itertools.takewhile(
            lambda w: w not in (*SHELL_END, "--") and not w.startswith((">", "2>")), shlex.split(rest, comments=True))]
        if (argv or run) and (error := _parse_error(parsers[script], argv)):
            wrong.append(f"{page}: {script} {' '.join(argv)}\n    {error}")
    assert not wrong, "benchmark lines their script refuses:\n" + "\n".join(wrong)


MAKE = re.compile(r"(?:^|&& |; )(?:[A-Z_]+=\S* )*make ((?:[\w-]+(?:=\S*)? ?)+)")


def test_every_make_line_in_the_docs_names_a_target_and_variables_of_the_makefile() -> None:
    """`make demo-best`, `make reference REFERENCE_MINUTES=3`: a target the Makefile has, and a variable it reads;
    a renamed target stops make, and a renamed variable is silently ignored (the run then takes the default)."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M))
    named = set()
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        lines = [line for _, block in FENCE.findall(text) for line in block.splitlines()]
        for span in lines + re.findall(r"`([^`]+)`", FENCE.sub("", text)):
            for match in MAKE.finditer(" ".join(span.split())):
                named.update((page.name, word) for word in match.group(1).split())
    assert len(named) > 20, f"found only {len(named)} make targets: the pattern no longer finds them"
    wrong = sorted(f"{page}: make ... {word}" for page, word in named
                   if word not in targets and word.partition("=")[0] not in variables)
    assert not wrong, f"pages name make targets or variables the Makefile lacks: {wrong}"


def test_the_listeners_audit_events_are_one_list_its_lines_deployment_md_and_its_help_name() -> None:
    """listen's audit events are LISTEN_EVENTS: each `"event"` the listener writes (read from its source, the
    values of its entries' "event" key), docs/deployment.md's table of them in that order, and `listen
    --audit-log`'s help, which names each."""
    source = ast.parse((ROOT / "pneumoscan" / "interop" / "dimse.py").read_text())
    written = set()
    for node in ast.walk(source):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "event":
                    written |= {n.value for n in ast.walk(value) if isinstance(n, ast.Constant)}
    assert written == set(LISTEN_EVENTS)
    page = (ROOT / "docs" / "deployment.md").read_text()
    table = re.search(r"^### The listener's audit log\n(.*?)(?=^#)", page, flags=re.S | re.M).group(1)
    assert tuple(re.findall(r"^\| `(\w+)` \|(?! when \|)", table, flags=re.M)) == LISTEN_EVENTS  # not its head
    [audit_log] = [a for a in _sub_commands()["listen"]._actions if "--audit-log" in a.option_strings]
    assert all(re.search(rf"\b{event}\b", audit_log.help) for event in LISTEN_EVENTS)

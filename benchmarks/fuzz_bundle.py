"""Coverage-guided fuzzing (atheris, libFuzzer) of loading a bundle, a folder users copy around, by the one entry
``predict`` and ``serve`` both take (:meth:`~pneumoscan.inference.predict.Stages.load`, torch backend), then one
film scored by it (:meth:`~pneumoscan.inference.predict.Predictor.predict_array`).

The rule checked: a bundle loads and scores a film with a probability in [0, 1] and one of its card's classes, or is
refused with a ValueError or OSError (what the CLI prints as one line, exit status 2) at its load or at that film.
Any other exception, a probability that is NaN or outside [0, 1] (damaged weights once gave ``nan,NORMAL`` with exit
status 0), an input past ``-timeout`` seconds or the process past its memory limit is a finding, written as
``crash-*``, ``timeout-*`` or ``oom-*`` in the working folder.

An input is a recipe applied to a tiny trained bundle (simple_cnn, 32 px, trained once on 160 synthetic films as the
tests' ``tiny_bundle`` is, kept in BASE): edits of bundle.json's fields (a field dropped; a value replaced by another
type, an odd number, NaN or infinity, a huge string), edits of model.safetensors and appearance.safetensors (bytes
flipped, cut short, the JSON header's fields edited as the card's are, tensor values made NaN), then, as its first
byte says, the files' SHA-256 and the card's checksum written again over the edits, as a tool that reseals a card
would: unsealed, nearly every edit stops at the checksums.

Run (needs ``pip install atheris``; one core, bounded)::

    taskset -c 0 nice python benchmarks/fuzz_bundle.py CORPUS --seconds 600 --timeout 5 --memory-mb 8192

libFuzzer's own flags follow a ``--``; a ``crash-*`` file given as CORPUS is run once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fuzz_decode import fuzz, fuzz_parser, imported_atheris  # the harnesses' one command line and run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tiny bundle is built as the tests build theirs (tests.conftest)

CARD, WEIGHTS, APPEARANCE = "bundle.json", "model.safetensors", "appearance.safetensors"
ODD_NUMBERS = (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e308, 5e-324, 2**63, -(2**63) - 1, 10**400, 0.5)
NAN32 = struct.pack("<f", math.nan)


def base_bundle(folder: Path) -> Path:
    """FOLDER/run/bundle: a tiny pneumonia bundle, trained once (seconds) on enough synthetic films (120 after
    validation's) to keep their appearance (appearance.safetensors)."""
    bundle = folder / "run" / "bundle"
    if not (bundle / CARD).is_file():
        from tests.conftest import _tiny_bundle, _write_tiny_dataset

        shutil.rmtree(folder, ignore_errors=True)
        _tiny_bundle(_write_tiny_dataset(folder / "data", train=80), folder / "run", "pneumonia")
    return bundle


def _paths(tree: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON tree, the root first: the keys and indices that lead there."""
    out = [at]
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*at, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, (*at, i))
    return out


def _value(fdp: Any, old: Any) -> Any:
    """Another value for a JSON field: another type, an odd number, a huge string, the old one wrapped."""
    kind = fdp.ConsumeIntInRange(0, 9)
    if kind == 0:
        return fdp.ConsumeInt(8)
    if kind == 1:
        return ODD_NUMBERS[fdp.ConsumeIntInRange(0, len(ODD_NUMBERS) - 1)]
    if kind == 2:
        return fdp.ConsumeRegularFloat()
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    if kind == 4:
        return "x" * 10 ** fdp.ConsumeIntInRange(3, 7)
    if kind == 5:
        return [None, True, False][fdp.ConsumeIntInRange(0, 2)]
    if kind == 6:
        return [old]
    if kind == 7:
        return {"": old}
    if kind == 8:
        return str(old)
    return old * 2 if isinstance(old, (int, float, str, list)) else []


def mutate_json(fdp: Any, tree: Any) -> Any:
    """``tree`` with a few fields dropped or given other values, chosen by the input."""
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        places = _paths(tree)
        at = places[fdp.ConsumeIntInRange(0, len(places) - 1)]
        if not at:
            tree = _value(fdp, tree)
            continue
        parent = tree
        for key in at[:-1]:
            parent = parent[key]
        if fdp.ConsumeBool():
            del parent[at[-1]]
        else:
            parent[at[-1]] = _value(fdp, parent[at[-1]])
    return tree


def mutate_tensors(fdp: Any, data: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header edited, values made NaN, bytes flipped or cut."""
    kind = fdp.ConsumeIntInRange(0, 5)
    size = int.from_bytes(data[:8], "little")
    if kind == 1 and size + 8 <= len(data):  # the header's fields (dtype, shape, data_offsets), as the card's
        header = mutate_json(fdp, json.loads(data[8 : 8 + size]))
        text = json.dumps(header).encode()
        return len(text).to_bytes(8, "little") + text + data[8 + size :]
    if kind == 2:  # float32 values made NaN: the file is sound, the model answers NaN
        start = fdp.ConsumeIntInRange(8 + size, max(8 + size, len(data) - 4))
        count = fdp.ConsumeIntInRange(1, 64)
        return data[:start] + NAN32 * count + data[start + 4 * count :]
    if kind == 3:
        return data[: fdp.ConsumeIntInRange(0, len(data))]
    if kind == 4:
        flipped = bytearray(data)
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            flipped[fdp.ConsumeIntInRange(0, len(data) - 1)] ^= 1 << fdp.ConsumeIntInRange(0, 7)
        return bytes(flipped)
    if kind == 5:
        return data + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    return data


class Harness:
    """The base bundle's files in memory, and a folder each input's bundle is written to."""

    def __init__(self, base: Path) -> None:
        self.card = json.loads((base / CARD).read_text())
        self.tensors = {name: (base / name).read_bytes() for name in (WEIGHTS, APPEARANCE) if (base / name).is_file()}
        self.folder = Path(tempfile.mkdtemp(prefix="fuzz_bundle_")) / "bundle"
        shutil.copytree(base, self.folder)
        import numpy as np

        y, x = np.mgrid[0:64, 0:64]  # a film with a radiograph's range of grey levels, as the scoring checks
        self.film = ((x * 3 + y) % 256).astype(np.uint8)

    def write(self, data: bytes) -> None:
        """The bundle ``data`` describes, written over the folder's."""
        from pneumoscan.core.digests import bytes_sha256, json_sha256

        import atheris

        fdp = atheris.FuzzedDataProvider(data)
        reseal = fdp.ConsumeIntInRange(0, 3)
        card = mutate_json(fdp, json.loads(json.dumps(self.card)))
        tensors = {name: mutate_tensors(fdp, raw) for name, raw in self.tensors.items()}
        for name, raw in tensors.items():
            (self.folder / name).write_bytes(raw)
        if isinstance(card, dict):
            if reseal & 1 and isinstance(card.get("files"), dict):
                card["files"].update({name: bytes_sha256(raw)
                                      for name, raw in tensors.items() if name in card["files"]})
            if reseal & 2:
                try:
                    card["checksum"] = json_sha256({k: v for k, v in card.items() if k != "checksum"})
                except (TypeError, ValueError):  # NaN or a huge integer: no checksum pneumoscan could write
                    pass
        (self.folder / CARD).write_text(json.dumps(card))

    def one_input(self, data: bytes) -> None:
        """Load and score as ``predict`` does; raise on anything but a sound reading or a one-line refusal."""
        from pneumoscan.inference.predict import Stages

        self.write(data)
        try:
            stages = Stages.load(self.folder, None, "torch")
            reading = stages.first.predict_array(self.film)
        except (ValueError, OSError) as e:
            if not str(e).strip():
                raise AssertionError(f"refused with no reason ({type(e).__name__})") from e
            return
        probability, classes = reading["probability"], stages.first.card.classes
        if not (isinstance(probability, float) and 0.0 <= probability <= 1.0) or reading["label"] not in classes:
            raise AssertionError(f"read as {probability!r}, {reading['label']!r} (classes {classes})")


def _leaves(tree: Any, at: str = "") -> dict[str, Any]:
    """A JSON tree's values by their place (``val_metrics.ci.auc[0]``)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{at}.{key}".lstrip(".")).items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _leaves(value, f"{at}[{i}]").items()}
    return {at: tree}


def list_loads(harness: Harness, corpus: Path) -> None:
    """For each input of CORPUS whose bundle loads and scores, the card's fields that differ from the base's: what
    the rule cannot see, a resealed edit the card's checks leave unread (shown by /v1/model and MODEL_CARD.md)."""
    import logging

    from pneumoscan.inference.predict import Stages

    logging.disable(logging.WARNING)
    base = _leaves(harness.card)
    for path in sorted(corpus.iterdir()):
        harness.write(path.read_bytes())
        try:
            reading = Stages.load(harness.folder, None, "torch").first.predict_array(harness.film)
        except (ValueError, OSError):
            continue
        card = _leaves(json.loads((harness.folder / CARD).read_text()))
        changed = {k: (base.get(k), card.get(k)) for k in sorted(base.keys() | card.keys())
                   if base.get(k) != card.get(k) and k != "checksum" and not k.startswith("files.")}
        print(f"{path.name}: {reading['probability']:.4f} {reading['label']}",
              *(f"  {k}: {str(old)[:40]} -> {str(new)[:40]}" for k, (old, new) in changed.items()), sep="\n")


def main() -> None:
    parser = fuzz_parser(__doc__, timeout=5, memory_mb=8192)
    parser.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "pneumoscan_fuzz_bundle",
                        help="where the tiny bundle is trained once and kept (default: TMPDIR/pneumoscan_fuzz_bundle)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # the base, in its own process
    parser.add_argument("--list-loads", action="store_true",
                        help="list, for each input of CORPUS that loads, the card's fields it changed (no fuzzing)")
    args, unknown = parser.parse_known_args()
    if args.build_only:
        base_bundle(args.base)
        return
    if not (args.base / "run" / "bundle" / CARD).is_file():  # trained apart: pneumoscan is instrumented on import
        subprocess.run([sys.executable, __file__, "unused", "--base", str(args.base), "--build-only"], check=True)
    atheris = imported_atheris()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    base = args.base / "run" / "bundle"
    with atheris.instrument_imports(include=["pneumoscan", "safetensors"]):
        import pneumoscan.inference.predict  # noqa: F401
        import pneumoscan.models.bundle  # noqa: F401
        import pneumoscan.models.card  # noqa: F401
    harness = Harness(base)
    if args.list_loads:
        list_loads(harness, Path(args.corpus))
        return
    # the bundle as it is, resealed or not, and a few edits of each kind
    fuzz(atheris, args, unknown, harness.one_input, lambda: {
        f"seed{n}": seed + bytes(range(n * 7, n * 7 + 16))
        for n, seed in enumerate((b"\0", b"\3", b"\3\1", b"\3\0\2\0", b"\3\0\1\1", b"\3\0\4\2\0\2"))})


if __name__ == "__main__":
    main()

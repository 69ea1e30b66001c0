"""Coverage-guided fuzzing (atheris, libFuzzer) of reading a CSV manifest (``--data manifest.csv``) as every command
does: :func:`~pneumoscan.data.layouts.discover` of the file.

The rule checked: any bytes as manifest.csv give records that each name a path and a patient, a label of
:data:`~pneumoscan.data.layouts.LABELS` and a split of :data:`~pneumoscan.core.options.SPLITS` (or none), or are
refused with a ValueError or OSError (what the CLI prints as one line, exit status 2). Any other exception, another
record, an input past ``-timeout`` seconds or the process past its memory limit is a finding, written as ``crash-*``,
``timeout-*`` or ``oom-*`` in the working folder.

The manifest sits in a folder of a few films (64 px, from $PNEUMOSCAN_DATA's train/) named as the Kaggle release
names them; the seeds are manifests of them with every column, in the spellings a spreadsheet writes (a byte-order
mark, CRLF, quoted fields, a site's own column).

Run (needs ``pip install atheris``; one core, bounded)::

    taskset -c 0 nice python benchmarks/fuzz_manifest.py CORPUS --seconds 600 --timeout 2 --memory-mb 3072

libFuzzer's own flags follow a ``--``; a ``crash-*`` file given as CORPUS is run once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fuzz_decode import fuzz, fuzz_parser, imported_atheris  # the harnesses' one command line and run

SEEDS = {
    "plain.csv": "path,label\nNORMAL/IM-0001-0001.jpeg,NORMAL\nPNEUMONIA/person1_bacteria_1.jpeg,PNEUMONIA\n",
    "full.csv": "path,label,subtype,patient,split,site\nNORMAL/IM-0001-0001.jpeg,NORMAL,normal,IM-0001,train,A\n"
                "PNEUMONIA/person1_bacteria_1.jpeg,PNEUMONIA,bacteria,person1,test,B\n"
                "PNEUMONIA/person2_virus_2.jpeg,PNEUMONIA,,,val,\n",
    "spreadsheet.csv": '\ufeffPath,Label,Split\r\n"NORMAL/IM-0001-0001.jpeg","NORMAL","train"\r\n'
                       '"PNEUMONIA/person2_virus_2.jpeg",pneumonia,test\r\n',
}


def films(folder: Path, data: Path) -> None:
    """Three films in FOLDER as the seeds' rows name them, from the dataset's train/ at 64 px."""
    from PIL import Image

    sources = sorted((data / "train").glob("*/*.jpeg"))[:3]
    if len(sources) < 3:
        raise SystemExit(f"no training films in {data / 'train'}: give --data or set PNEUMOSCAN_DATA")
    for source, name in zip(sources, ("NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person1_bacteria_1.jpeg",
                                      "PNEUMONIA/person2_virus_2.jpeg")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("L").resize((64, 64)).save(folder / name)


def make_one_input(manifest: Path):  # noqa: ANN201 (atheris' callback)
    """The check of one input, written as ``manifest``."""
    from pneumoscan.core.options import SPLITS
    from pneumoscan.data.layouts import LABELS, discover

    def one_input(data: bytes) -> None:
        manifest.write_bytes(data)
        try:
            found = discover(manifest)
        except (ValueError, OSError) as e:
            if not str(e).strip():
                raise AssertionError(f"refused with no reason ({type(e).__name__})") from e
            return
        for rec in found.records:
            if rec.label not in LABELS or rec.split not in ("", *SPLITS) or not rec.path or not rec.patient:
                raise AssertionError(f"read as {rec}")

    return one_input


def main() -> None:
    parser = fuzz_parser(__doc__, timeout=2, memory_mb=3072, data="the films")
    args, unknown = parser.parse_known_args()
    atheris = imported_atheris()
    with atheris.instrument_imports(include=["pneumoscan"]):
        import pneumoscan.data.layouts  # noqa: F401
    folder = Path(tempfile.mkdtemp(prefix="fuzz_manifest_"))
    films(folder, args.data)
    fuzz(atheris, args, unknown, make_one_input(folder / "manifest.csv"),
         lambda: {name: text.encode() for name, text in SEEDS.items()})


if __name__ == "__main__":
    main()

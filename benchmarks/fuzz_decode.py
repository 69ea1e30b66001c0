"""Coverage-guided fuzzing (atheris, libFuzzer) of the one path from a film's bytes to the model's input that
``serve`` (/v1/predict) and ``predict`` both take: :func:`~pneumoscan.data.decode.read_dicom`, then
:func:`~pneumoscan.data.scope.read_described` (its header's checks and :func:`~pneumoscan.data.decode.read_gray`
towards the model's size).

The rule checked: any bytes give a 2-D uint8 film or a :class:`~pneumoscan.data.pixels.DecodeError` (the service's
422 with its reason). Any other exception, a film of another shape or type, an input past ``-timeout`` seconds or
the process past its memory limit is a finding: libFuzzer stops and writes the input as ``crash-*``, ``timeout-*``
or ``oom-*`` in the working folder. The first byte of an input says whether it is read as an upload sent as
application/dicom (odd) or not (even); the rest is the file.

The seeds (written to CORPUS when it holds none) are real films from $PNEUMOSCAN_DATA (train/, 224 px), reduced to
64 px so an execution is cheap: a PNG, a JPEG, and DICOMs of them made as the tests make them
(``tests.builders.dicom_bytes``) in explicit and implicit VR little endian, big endian, deflated, RLE, JPEG-LS,
JPEG 2000 lossless, JPEG baseline (8 bits) and without the preamble, one of them 224 px.

Run (needs ``pip install atheris``; one core, bounded)::

    taskset -c 0 nice python benchmarks/fuzz_decode.py CORPUS --seconds 600 --timeout 2 --memory-mb 3072

libFuzzer's own flags follow a ``--`` (``-runs=N``, ``-artifact_prefix=DIR/``); a ``crash-*`` file given as CORPUS
is run once. ``--memory-mb`` caps the address space (``resource.setrlimit``), a MemoryError being a finding too.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the DICOM writer is the tests' (tests.builders)

DEFAULT_DATA = "data/chest_xray"
SEED_SIDE = 64


def seeds(data: Path) -> dict[str, bytes]:
    """Name -> input (its first byte the dicom flag) for a few real films in each format the service reads."""
    import numpy as np
    import pydicom
    import simplejpeg
    from PIL import Image
    from pydicom import uid

    from tests.builders import dicom_bytes, framed_dicom

    films = sorted((data / "train").glob("*/*.jpeg"))[:2]
    if not films:
        raise SystemExit(f"no training film in {data / 'train'}: give --data or set PNEUMOSCAN_DATA")
    out: dict[str, bytes] = {}
    for n, path in enumerate(films):
        full = Image.open(path).convert("L")
        small = full.resize((SEED_SIDE, SEED_SIDE))
        gray = np.asarray(small)
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            small.save(buf, fmt)
            out[f"{n}.{fmt.lower()}"] = b"\0" + buf.getvalue()
        plain = dicom_bytes(gray.astype(np.uint16) * 16, BodyPartExamined="CHEST", ViewPosition="PA")
        out[f"{n}.explicit.dcm"] = b"\1" + plain
        out[f"{n}.bare.dcm"] = b"\1" + dicom_bytes(gray, bits=8, preamble=False)
        for name, syntax in (("implicit", uid.ImplicitVRLittleEndian), ("bigendian", uid.ExplicitVRBigEndian),
                             ("deflated", uid.DeflatedExplicitVRLittleEndian)):
            ds = pydicom.dcmread(io.BytesIO(plain))
            ds.file_meta.TransferSyntaxUID = syntax
            if syntax == uid.ExplicitVRBigEndian:
                ds.PixelData = gray.astype(">u2").tobytes()
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, little_endian=syntax != uid.ExplicitVRBigEndian,
                             implicit_vr=syntax == uid.ImplicitVRLittleEndian, force_encoding=True)
            out[f"{n}.{name}.dcm"] = b"\1" + buf.getvalue()
        for name, syntax in (("rle", uid.RLELossless), ("jpegls", uid.JPEGLSLossless),
                             ("j2k", uid.JPEG2000Lossless)):
            ds = pydicom.dcmread(io.BytesIO(plain))
            ds.compress(syntax)
            buf = io.BytesIO()
            ds.save_as(buf)
            out[f"{n}.{name}.dcm"] = b"\0" + buf.getvalue()
        frame = simplejpeg.encode_jpeg(gray[:, :, None], colorspace="GRAY")
        out[f"{n}.baseline.dcm"] = b"\0" + framed_dicom(frame, uid.JPEGBaseline8Bit, SEED_SIDE)
    out["full.explicit.dcm"] = b"\0" + dicom_bytes(np.asarray(Image.open(films[0]).convert("L")), bits=8)
    return out


def one_input(data: bytes) -> None:
    """Decode ``data`` as the service does; raise on anything but a film or a DecodeError."""
    import numpy as np

    from pneumoscan.data.decode import read_dicom
    from pneumoscan.data.pixels import DecodeError
    from pneumoscan.data.scope import read_described

    if len(data) < 2:
        return
    dicom, film = bool(data[0] & 1), data[1:]
    try:
        gray, described = read_described(film, read_dicom(film, dicom), 224, dicom, facts=True)
    except DecodeError:
        return
    if not (isinstance(gray, np.ndarray) and gray.ndim == 2 and gray.dtype == np.uint8 and min(gray.shape) > 0):
        raise AssertionError(f"read as {type(gray).__name__} {getattr(gray, 'shape', '')} "
                             f"{getattr(gray, 'dtype', '')}, not a 2-D uint8 film")
    if not isinstance(described, dict):
        raise AssertionError(f"described as {type(described).__name__}")


def fuzz_parser(doc: str, timeout: int, memory_mb: int, data: str | None = None) -> argparse.ArgumentParser:
    """The command line every fuzz harness here takes (fuzz_bundle.py and fuzz_manifest.py call it too), described
    by the first paragraph of the harness's ``doc``: the corpus, libFuzzer's own flags, and how long, how long an
    input and how much memory; with ``data`` (what the harness takes from it), the dataset too."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", help="folder of inputs (seeded when it holds none), or a crash file to run again")
    parser.add_argument("libfuzzer", nargs="*", help="libFuzzer's own flags, after -- (-runs=N, -max_len=N)")
    parser.add_argument("--seconds", type=int, default=600, help="how long to fuzz (default 600)")
    parser.add_argument("--timeout", type=int, default=timeout, help=f"seconds an input may take (default {timeout})")
    parser.add_argument("--memory-mb", type=int, default=memory_mb, help="address-space limit (resource.setrlimit) "
                        f"and libFuzzer's RSS limit (default {memory_mb})")
    if data is not None:
        parser.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA", DEFAULT_DATA), type=Path,
                            help=f"dataset {data} come from (default $PNEUMOSCAN_DATA, else {DEFAULT_DATA})")
    return parser


def imported_atheris() -> Any:
    """atheris, or the exit that says how to install it (it is no test dependency)."""
    try:
        import atheris
    except ImportError:
        raise SystemExit("atheris is not installed: pip install atheris") from None
    return atheris


def fuzz(atheris: Any, args: argparse.Namespace, unknown: list[str], one_input: Callable[[bytes], None],
         seeds: Callable[[], Mapping[str, bytes]]) -> None:
    """Fuzz ``one_input`` over the corpus, seeded by ``seeds`` when it is an empty folder (a file: run once), within
    ``--memory-mb`` of address space, as :func:`fuzz_parser` read it."""
    corpus = Path(args.corpus)
    if not corpus.is_file():
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for name, data in seeds().items():
                (corpus / name).write_bytes(data)
    limit = args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    flags = [f"-max_total_time={args.seconds}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.memory_mb}",
             "-print_final_stats=1", *args.libfuzzer, *unknown]
    atheris.Setup([sys.argv[0], str(corpus), *flags], one_input)
    atheris.Fuzz()


def main() -> None:
    parser = fuzz_parser(__doc__, timeout=2, memory_mb=3072, data="the seeds' films")
    args, unknown = parser.parse_known_args()
    atheris = imported_atheris()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with atheris.instrument_imports(include=["pneumoscan", "pydicom"]):
        import pydicom.encaps  # noqa: F401
        import pydicom.pixels  # noqa: F401

        import pneumoscan.data.decode  # noqa: F401
        import pneumoscan.data.scope  # noqa: F401
    fuzz(atheris, args, unknown, one_input, lambda: seeds(args.data))


if __name__ == "__main__":
    main()

"""Abuse test of `pneumoscan serve` on loopback: what 64 concurrent worst-case uploads do to the server's memory
and to its health probe, and what 16 well-behaved clients get meanwhile-free.

Run: ``python benchmarks/bench_abuse.py [BUNDLE] [--backend onnx] [--only accepted|refused] [-- SERVE OPTIONS...]``.
Without a bundle a tiny one is trained first (simple_cnn, 32 px, synthetic images: seconds); give a real one for
real figures. Two sets of kinds of upload, each built in memory at start-up:

* accepted: the costliest the decoder reads (each just under the 20 MB upload limit, or at its pixel limit);
* refused: the decode bombs review found (a small file that cost gigabytes or minutes before its fix), each at the
  size that found it and against the default limits, one for each check that now refuses it (the fix's commit
  named in its builder). Every one must be answered 4xx, for that check's reason: a 200, a refusal for another
  reason (the bomb no longer reaches its check) or a 5xx other than load shedding misses the goal.

Measured, per kind of upload:

* peak RSS of the server process above its idle RSS while ``--uploads`` (64) of them are sent at once
  (goal: under 2 GB), sampled every 20 ms and read from the kernel's high-water mark (VmHWM, reset first);
* /healthz latency, probed every 50 ms during that load (goal: p99 under 1 s; the flood starts once a first
  probe has been answered, and a flood without a probe misses the goal: health was not measured);
* the answers: 200, 503 (load shed by the queue bound, with Retry-After), other 5xx (goal: 0), 4xx, dropped.

Before the floods, the throughput of ``--clients`` (16) clients posting real X-rays ($PNEUMOSCAN_DATA) for
``--seconds`` (goal: no 5xx, nothing dropped); after them, how long a plain prediction then waits (the work the
flood left behind: decodes already running finish, queued work whose client gave up is dropped).
Everything is bounded in count and time; the server listens on 127.0.0.1 only. Exit status 1 when a goal is
missed. Figures move with whatever else runs on the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.synchronize
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom import uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the DICOM writer is the tests' (tests.builders)

from bench_serve import free_port, post_xrays, start_server  # noqa: E402  (this folder: the script's own path entry)
from bench_shift import refusing  # noqa: E402
from pneumoscan.models.card import load_card  # noqa: E402
from tests.builders import dicom_bytes, framed_dicom  # noqa: E402

DATA = Path(os.environ.get("PNEUMOSCAN_DATA") or ROOT / "data/chest_xray")
MB = 2**20
GOAL_PEAK_MB, GOAL_HEALTH_P99_S = 2048, 1.0
PROBER_START_S = 120  # the prober process imports this script (and torch) before its first probe


# ---------------------------------------------------------------- inputs


def tiny_bundle(directory: Path) -> Path:
    """A simple_cnn bundle trained for one epoch on 48 synthetic 64 px images."""
    from pneumoscan.training.config import TrainConfig
    from pneumoscan.training.train import train

    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        folder = directory / "data" / "train" / label
        folder.mkdir(parents=True)
        for i in range(24):
            img = rng.normal(120 + 40 * (label == "PNEUMONIA"), 30, (64, 64)).clip(0, 255).astype(np.uint8)
            name = f"IM-{i:04d}-0001.jpeg" if label == "NORMAL" else f"person{i}_bacteria_{i}.jpeg"
            Image.fromarray(img).save(folder / name)
    cfg = TrainConfig(task="pneumonia", model="simple_cnn", pretrained=False, image_size=32, epochs=1, batch_size=8,
                      val_fraction=0.25)
    return train(directory / "data", cfg, directory / "run")


def png_bytes(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


# a kind of upload: its bytes, and the words of the refusal it must get (None: it must be read)
Upload = tuple[bytes, str | None]


def worst_uploads(limit_mb: float) -> dict[str, Upload]:
    """Kinds of upload that cost the server most: the largest file (incompressible 8-bit noise PNG just under
    the limit, decoded at full size) and the largest decode the decoder accepts (a 16-bit PNG just under its
    pixel and decoded-byte limits, 2 bytes a pixel, that compresses to a few MB)."""
    from pneumoscan.data.pixels import MAX_DECODED_BYTES, MAX_PIXELS

    rng = np.random.default_rng(1)
    side = int(np.sqrt(limit_mb * MB * 0.97))
    noise = png_bytes(rng.integers(0, 256, (side, side), dtype=np.uint8), 1)
    big = int(np.sqrt(min(MAX_PIXELS, MAX_DECODED_BYTES / 2) * 0.98))
    ramp = (np.arange(big, dtype=np.uint32) * 4095 // big).astype(np.uint16)
    wide = png_bytes(np.broadcast_to(ramp, (big, big)).copy(), 9)
    assert len(noise) < limit_mb * MB and len(wide) < limit_mb * MB
    return {f"8-bit noise PNG {side}x{side} ({len(noise) / MB:.1f} MB)": (noise, None),
            f"16-bit PNG {big}x{big} ({len(wide) / MB:.1f} MB)": (wide, None)}


# ---------------------------------------------------------------- decode bombs, each refused before its cost


def _segment(marker: int, body: bytes) -> bytes:
    """A JPEG or JPEG 2000 marker segment (its length counts itself)."""
    return struct.pack(">HH", marker, len(body) + 2) + body


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _box(kind: bytes, body: bytes) -> bytes:
    """A JP2 box."""
    return struct.pack(">I", 8 + len(body)) + kind + body


def _ramp(side: int) -> np.ndarray:
    """A small 12-bit film of many grey levels: a bomb's host, never the part that costs."""
    return (np.add.outer(np.arange(side), np.arange(side)) * 16).astype(np.uint16)


def jp2_decoy(side: int) -> bytes:
    """bd86afa: a JP2 frame whose codestream (jp2c) is ``side`` px square, after a box holding a copy of a SOC and
    SIZ of the header's 256 x 256, which the size check read (12,000 px in 52 KB decoded to 2.4 GB)."""
    import openjpeg

    noise = np.random.default_rng(0).integers(0, 50, (256, 256))
    jp2 = openjpeg.encode((_ramp(256) // 4 + noise).astype(np.uint16), bits_stored=12, codec_format=1)
    at = jp2.index(b"jp2c") - 4
    codestream = bytearray(jp2[at + 8 :])
    copy = bytes(codestream[: 4 + int.from_bytes(codestream[4:6], "big")])  # SOC, then SIZ
    codestream[8:16] = struct.pack(">II", side, side)  # Xsiz, Ysiz
    frame = jp2[:at] + _box(b"xml ", copy) + _box(b"jp2c", bytes(codestream))
    return framed_dicom(frame, uid.JPEG2000Lossless, 256, 12)


def j2k_frame(side: int, tile: int, precinct: int | None) -> bytes:
    """ca781cd: a JPEG 2000 codestream of ``side`` px (8-bit grey; 5 levels, 64 x 64 code blocks, precincts of
    ``2**precinct`` px square when given) in ``tile`` px tiles, every packet empty: OpenJPEG builds each tile's,
    code block's and precinct's structure first (700 bytes of 2 x 2 precincts of 4 x 4 code blocks took 5.8 GB,
    23 px tiles 0.8 GB)."""
    levels = 5
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, tile, tile, 0, 0, 1) + bytes([7, 1, 1])
    precincts = b"" if precinct is None else bytes([precinct * 0x11] * (levels + 1))
    cod = bytes([precinct is not None, 0, 0, 1, 0, levels, 4, 4, 0, 1]) + precincts  # one layer, reversible
    qcd = bytes([0x40] + [9 << 3] * (3 * levels + 1))
    parts = [b"\xff\x4f", _segment(0xFF51, siz), _segment(0xFF52, cod), _segment(0xFF5C, qcd)]
    packets = bytes(levels + 1)  # an empty packet a resolution
    for t in range(((side + tile - 1) // tile) ** 2):
        parts += [_segment(0xFF90, struct.pack(">HIBB", t, 14 + len(packets), 0, 1)), b"\xff\x93", packets]
    return b"".join([*parts, b"\xff\xd9"])


def progressive_jpeg(side: int, components: int, precision: int) -> bytes:
    """A valid progressive JPEG of all-zero coefficients coded the long way: a DC scan, then each AC coefficient
    alone at Al 13 and refined down to 0, a component at a time (883 scans each), every AC scan one end-of-band run
    over all blocks, each of which the decoder visits (4f7077f: 12,000 px colour, 2,649 scans in 1.5 MB, 71 s of
    CPU; aa78619: a 12-bit one in a DICOM frame, 5,792 px, 883 scans in 117 KB, 12 s)."""
    blocks = ((side + 7) // 8) ** 2
    bits, left = "", blocks
    while left:  # EOBr: the 4-bit code r, then the run's low r bits
        run = min(left, 32767)
        r = run.bit_length() - 1
        bits += format(r, "04b") + (format(run - (1 << r), f"0{r}b") if r else "")
        left -= run
    bits += "1" * (-len(bits) % 8)
    runs = int(bits, 2).to_bytes(len(bits) // 8, "big").replace(b"\xff", b"\xff\x00")
    ids = range(1, components + 1)
    sof = struct.pack(">BHHB", precision, side, side, components) + b"".join(bytes([c, 0x11, 0]) for c in ids)
    # DC table 0: one 1-bit code (category 0); AC table 0: EOB0..EOB14 (symbols r << 4) as the 4-bit codes r
    dht = bytes([0x00, 1, *[0] * 15, 0, 0x10, 0, 0, 0, 15, *[0] * 12]) + bytes(r << 4 for r in range(15))
    parts = [b"\xff\xd8", _segment(0xFFDB, bytes([0] + [1] * 64)), _segment(0xFFC2, sof), _segment(0xFFC4, dht)]
    for c in ids:
        parts += [_segment(0xFFDA, bytes([1, c, 0, 0, 0, 0])), bytes(-(-blocks // 8))]
        for k in range(1, 64):
            for ah, al in [(0, 13), *((a, a - 1) for a in range(13, 0, -1))]:
                parts += [_segment(0xFFDA, bytes([1, c, 0, k, k, ah << 4 | al])), runs]
    return b"".join([*parts, b"\xff\xd9"])


def lossless_frame(side: int, scans: int) -> bytes:
    """aa78619: a 12-bit JPEG Lossless (process 14, SV1) frame of one scan of 1-bit codes, coded ``scans`` times,
    each just within the Huffman-code cap when it was a scan's (4,300 px, 8 scans in 18.5 MB: 38 s)."""
    sof = _segment(0xFFC3, struct.pack(">BHHB", 12, side, side, 1) + bytes([1, 0x11, 0]))
    dht = _segment(0xFFC4, bytes([0, 1, *[0] * 15, 0]))  # one 1-bit code: difference 0
    scan = _segment(0xFFDA, bytes([1, 1, 0, 1, 0, 0])) + bytes(-(-side * side // 8))
    return b"\xff\xd8" + sof + dht + scan * scans + b"\xff\xd9"


def rle_frame(side: int, size: int) -> bytes:
    """0cbaed1: an RLE frame whose one segment starts at offset 66, not 64 (pylibjpeg-rle refuses the header, and
    pydicom's own decoder expanded it whole): the film as literal runs, then ``size`` bytes in all of runs of 128
    copies (19 MB took 1.1 GB)."""
    rows = (np.add.outer(np.arange(side), np.arange(side)) % 251).astype(np.uint8).reshape(-1, 128)
    literal = np.hstack([np.full((len(rows), 1), 127, np.uint8), rows]).tobytes()
    head = struct.pack("<16L", 1, 66, *[0] * 14) + bytes(2)
    return head + literal + b"\x81\x07" * ((size - len(head) - len(literal)) // 2)


def palette_film(side: int) -> bytes:
    """9988d65: a PALETTE COLOR film (RLE, a grey ramp in runs of 23) counted at one sample a pixel against the
    byte limit, which its three colour samples a pixel exceed (5,792 px in 2.9 MB took 1.3 GB)."""
    runs = -(-side // 23)
    lengths = np.minimum(23, side - 23 * np.arange(runs))
    values = np.add.outer(np.arange(side), np.arange(runs)) % 256
    pairs = np.stack([np.broadcast_to(257 - lengths, values.shape), values], axis=-1).astype(np.uint8)
    frame = struct.pack("<16L", 1, 64, *[0] * 14) + pairs.tobytes()
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    palette = {f"{c}PaletteColorLookupTable{part}": value for c in ("Red", "Green", "Blue")
               for part, value in (("Descriptor", [256, 0, 16]), ("Data", lut))}
    return framed_dicom(frame, uid.RLELossless, side, 8, photometric="PALETTE COLOR", **palette)


def transparent_png(side: int) -> bytes:
    """3150623: an 8-bit grey PNG (each row a ramp: Sub filter, +1 a pixel) whose tRNS makes grey 0, which its
    pixels use, transparent; the check converted the film to an alpha band (12,000 px in 140 KB took 0.9 GB)."""
    idat = zlib.compress(b"\x01" * (side + 1) * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _png_chunk(b"tRNS", bytes(2)) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def deflated_items(size: int) -> bytes:
    """9c42942: a Deflated Explicit VR LE film whose data set starts with a private sequence of ``size`` bytes of
    empty items (8 each), for each of which pydicom built a Dataset (200 MB from 309 KB took 3.3 GB)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(_ramp(64))))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf)
    data = buf.getvalue()
    start = 144 + int.from_bytes(data[140:144], "little")  # preamble, DICM, (0002,0000) and the group it counts
    items, pack = b"\xfe\xff\x00\xe0\0\0\0\0" * 2**20, zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [pack.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF))]
    body += [pack.compress(items) for _ in range(size // len(items))]
    end = b"\xfe\xff\xdd\xe0\0\0\0\0" + zlib.decompress(data[start:], -zlib.MAX_WBITS)  # the film's own elements
    return data[:start] + b"".join([*body, pack.compress(end), pack.flush()])


def icon_then_elements(count: int) -> bytes:
    """4b6a164: a film with an Icon Image Sequence, then ``count`` empty private elements (8 bytes each) between the
    icon's pixel data and the film's, where the element count once stopped (2 million in 16 MB: 8 s)."""
    icon = pydicom.Dataset()
    icon.Rows = icon.Columns = 8
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(64)
    data = dicom_bytes(_ramp(64), IconImageSequence=[icon])
    empty = np.zeros(count, [("group", "<u2"), ("element", "<u2"), ("vr", "S2"), ("length", "<u2")])
    empty["group"], empty["element"], empty["vr"] = 0x0099, 0x1000 + np.arange(count) % 0xF000, b"LO"
    at = data.rindex(b"\xe0\x7f\x10\x00")  # the film's pixel data, after the icon's
    return data[:at] + empty.tobytes() + data[at:]


def icc_profiles(count: int) -> bytes:
    """319b2f8: a 256 px PNG of ``count`` ICC profiles (iCCP), each inflating to just under Pillow's 1 MiB cap,
    which Pillow inflated one by one with no total cap (19,000 in 19 MB: 93 s)."""
    film = png_bytes((_ramp(256) // 32).astype(np.uint8), 9)
    profile = _png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(2**20 - 64), 9))
    return film[:33] + profile * count + film[33:]  # after IHDR


def _size(data: bytes) -> str:
    return f"{len(data) / MB:.1f} MB" if len(data) >= MB else f"{len(data) / 1024:,.1f} KB"


def refused_uploads() -> dict[str, Upload]:
    """The decode bombs, each at the size that found it, with the words of the refusal that must answer it: one for
    each check, so tiny code blocks (the precincts' limit, whose unit test covers them) and a plain header of
    empty elements (the count the deflated and the icon kinds reach) are not floods of their own."""
    kinds = [
        ("JPEG 2000 DICOM: JP2 frame, decoy SIZ, codestream 12,000 x 12,000", jp2_decoy(12000),
         "the compressed frame is 12000 x 12000 pixels"),
        ("JPEG 2000 DICOM: 2 x 2 precincts, 5,792 x 5,792",
         framed_dicom(j2k_frame(5792, 5792, 1), uid.JPEG2000Lossless, 5792, 8), "precincts (limit 262,144)"),
        ("JPEG 2000 DICOM: 63,504 tiles of 23 px, 5,792 x 5,792",
         framed_dicom(j2k_frame(5792, 23, None), uid.JPEG2000Lossless, 5792, 8), "cut into 63,504 tiles"),
        ("progressive JPEG, 2,649 scans, 12,000 x 12,000 colour", progressive_jpeg(12000, 3, 8),
         "a progressive JPEG whose scans visit over"),
        ("12-bit progressive JPEG DICOM frame, 883 scans, 5,792 x 5,792",
         framed_dicom(progressive_jpeg(5792, 1, 12), uid.JPEGExtended12Bit, 5792, 12),
         "a progressive JPEG whose scans visit over"),
        ("JPEG Lossless DICOM, 8 scans, 4,300 x 4,300 12-bit",
         framed_dicom(lossless_frame(4300, 8), uid.JPEGLosslessSV1, 4300, 12), "JPEG scan too costly to check"),
        ("RLE DICOM, segment at offset 66, 2,048 x 2,048",
         framed_dicom(rle_frame(2048, 19 * MB), uid.RLELossless, 2048, 8),
         "the RLE frame's header does not describe its segments"),
        ("PALETTE COLOR DICOM, 5,792 x 5,792", palette_film(5792), "DICOM (3 sample(s) as float64)"),
        ("PNG with tRNS, 12,000 x 12,000 grey", transparent_png(12000), "image has transparent pixels"),
        ("deflated DICOM, 200 MB of empty sequence items", deflated_items(200 * MB),
         "DICOM data elements and sequence items"),
        ("DICOM, 2 million empty elements after an icon's pixel data", icon_then_elements(2_000_000),
         "DICOM data elements and sequence items"),
        ("PNG of 19,000 ICC profiles", icc_profiles(19_000), "ICC profiles (iCCP chunks)"),
    ]
    return {f"{name} ({_size(data)})": (data, refusal) for name, data, refusal in kinds}


def xrays(n: int = 32) -> list[bytes]:
    paths = (sorted((DATA / "train" / "PNEUMONIA").glob("*.jpeg"))[: n // 2]
             + sorted((DATA / "val").rglob("*.jpeg"))[: n // 2])
    if not paths:
        sys.exit(f"{DATA}: no .jpeg film in train/PNEUMONIA or val (set PNEUMOSCAN_DATA)")
    return [p.read_bytes() for p in paths]


# ---------------------------------------------------------------- the server and its memory


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """Largest RSS of ``pid`` while in use: sampled every 20 ms, and the kernel's own high-water mark (VmHWM)
    after resetting it, which catches spikes between samples."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self.stop = pid, 0, threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.hwm = True
        except OSError:
            self.hwm = False
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        if self.hwm:
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmHWM"))


# ---------------------------------------------------------------- load


def probe_loop(url: str, stop: mp.synchronize.Event, out: mp.connection.Connection) -> None:
    """/healthz every 50 ms until told to stop, in its own process, so the figures are the server's and not
    the load generator's event loop. Sends ``"ready"`` once a first probe has been answered (the flood waits for
    it: starting this process takes seconds), then, when stopped, the later probes as (start on the monotonic
    clock, latency or inf for a failure)."""
    probes: list[tuple[float, float]] = []
    ready = False
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            start = time.monotonic()
            try:
                ok = http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if ready:
                probes.append((start, time.monotonic() - start if ok else float("inf")))
            elif ok:
                ready = True
                out.send("ready")
                continue  # the next probe at once, to be in flight when the flood starts
            time.sleep(0.05)
    out.send(probes)


def _named(data: bytes) -> tuple[str, bytes, str]:
    """The multipart file of an upload: a name and type of its format, as a client sends them."""
    if data[128:132] == b"DICM":
        return "upload.dcm", data, "application/dicom"
    return ("upload.jpeg", data, "image/jpeg") if data[:2] == b"\xff\xd8" else ("upload.png", data, "image/png")


async def flood(url: str, data: bytes, uploads: int, timeout: float) -> dict:
    """``uploads`` concurrent posts of ``data`` while /healthz is probed from another process; the flood starts
    once the prober has had a first answer, and only the probes that overlap the flood are kept. The bodies of
    4xx answers are kept (each different one once), to tell which check refused the upload."""
    statuses: list[int | str] = []
    refusals: set[str] = set()

    async def one(http: httpx.AsyncClient) -> None:
        try:
            r = await http.post("/v1/predict", files={"file": _named(data)})
            statuses.append(r.status_code)
            if 400 <= r.status_code < 500:
                refusals.add(r.text)
        except httpx.HTTPError as e:
            statuses.append(type(e).__name__)

    ctx = mp.get_context("spawn")
    stop, (receiver, sender) = ctx.Event(), ctx.Pipe(duplex=False)
    prober = ctx.Process(target=probe_loop, args=(url, stop, sender), daemon=True)
    prober.start()
    if not mp.connection.wait([receiver, prober.sentinel], PROBER_START_S) or not receiver.poll():
        died = prober.exitcode
        stop.set()
        prober.join(timeout=30)
        why = f"exited with status {died}" if died is not None else f"had no answer within {PROBER_START_S:g} s"
        return {"statuses": [], "probes": [], "seconds": 0.0, "error": f"the /healthz prober {why}; no flood sent"}
    receiver.recv()  # "ready"
    limits = httpx.Limits(max_connections=uploads, max_keepalive_connections=uploads)
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(one(http) for _ in range(uploads)))
    end = time.monotonic()
    stop.set()
    probes = receiver.recv()
    prober.join(timeout=30)
    during = [latency for begun, latency in probes if begun < end and begun + latency > start]
    return {"statuses": statuses, "refusals": refusals, "probes": during, "seconds": end - start}


async def steady(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        statuses, latencies, elapsed = await post_xrays(http, images, clients, seconds, max_requests)
    return {"statuses": statuses, "latencies": latencies, "seconds": elapsed}


def tally(statuses: list[int | str]) -> dict[str, int]:
    return {
        "200": sum(s == 200 for s in statuses),
        "503 shed": sum(s == 503 for s in statuses),
        "other 5xx": sum(isinstance(s, int) and s >= 500 and s != 503 for s in statuses),
        "4xx": sum(isinstance(s, int) and 400 <= s < 500 for s in statuses),
        "dropped": sum(isinstance(s, str) for s in statuses),
        **{f"dropped: {name}": statuses.count(name) for name in sorted({s for s in statuses if isinstance(s, str)})},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", help="bundle to serve (default: train a tiny one)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--uploads", type=int, default=64, help="concurrent worst-case uploads per kind")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="duration of the steady-load phase")
    parser.add_argument("--max-requests", type=int, default=2000, help="cap on the steady-load phase")
    parser.add_argument("--timeout", type=float, default=180, help="per upload, in the flood phase")
    parser.add_argument("--only", choices=("accepted", "refused"),
                        help="flood with only the kinds the decoder reads, or only the decode bombs it refuses")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # after --: extra `pneumoscan serve` options

    if args.bundle:  # a path that holds no bundle, said before the uploads are built and the server started
        refusing(load_card, args.bundle)
    images = xrays()  # before a bundle is trained and the uploads built
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(Path(tmp))
        print(f"bundle {bundle}  backend {args.backend}  serve options {extra or 'defaults'}", flush=True)
        start = time.perf_counter()
        uploads = {**(worst_uploads(20) if args.only != "refused" else {}),
                   **(refused_uploads() if args.only != "accepted" else {})}
        print(f"{len(uploads)} kinds of upload built in {time.perf_counter() - start:.1f} s", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        proc = start_server(bundle, args.backend, port, log, extra)
        failures: list[str] = []
        results: dict[str, object] = {}
        try:
            for data in images[:4]:  # warm-up: model, threads, allocator
                httpx.post(f"{url}/v1/predict", files={"file": ("x.jpeg", data, "image/jpeg")}, timeout=120)
            idle_mb = status_kb(proc.pid, "VmRSS") / 1024
            print(f"idle RSS {idle_mb:.0f} MB   load average {os.getloadavg()[0]:.1f}", flush=True)
            got = asyncio.run(steady(url, images, args.clients, args.seconds, args.max_requests))
            lat = np.array(got["latencies"]) if got["latencies"] else np.array([np.nan])
            counts = tally(got["statuses"])
            rps = counts["200"] / got["seconds"]
            results["steady"] = {"clients": args.clients, "rps": rps, "p50_s": float(np.percentile(lat, 50)),
                                 "p95_s": float(np.percentile(lat, 95)), **counts}
            print(f"{args.clients} clients, real X-rays: {rps:.1f} req/s, p50 {np.percentile(lat, 50) * 1e3:.0f} ms "
                  f"p95 {np.percentile(lat, 95) * 1e3:.0f} ms; {counts}; load {os.getloadavg()[0]:.1f}", flush=True)
            if any(counts[k] for k in ("other 5xx", "dropped", "503 shed")):
                failures.append(f"steady load: {counts}")
            for kind, (data, refusal) in uploads.items():
                with PeakRSS(proc.pid) as peak:
                    got = asyncio.run(flood(url, data, args.uploads, args.timeout))
                peak_mb = peak.peak_kb / 1024 - idle_mb
                if "error" in got:
                    failures.append(f"{kind}: {got['error']}")
                    print(f"{args.uploads} x {kind}: {got['error']}", flush=True)
                    continue
                n = len(got["probes"])
                p50, p99, worst = (float(np.percentile(got["probes"], q)) if n else None for q in (50, 99, 100))
                counts = tally(got["statuses"])
                results[kind] = {"peak_above_idle_mb": round(peak_mb), "healthz_p50_s": p50, "healthz_p99_s": p99,
                                 "healthz_max_s": worst, "probes": n, "seconds": got["seconds"], **counts}
                health = (f"/healthz p50 {p50 * 1e3:.0f} ms p99 {p99 * 1e3:.0f} ms max {worst * 1e3:.0f} ms" if n
                          else "/healthz not measured")
                print(f"{args.uploads} x {kind}: peak RSS +{peak_mb:.0f} MB above idle; {health} ({n} probes); "
                      f"{counts}; {got['seconds']:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
                if peak_mb > GOAL_PEAK_MB:
                    failures.append(f"{kind}: peak RSS +{peak_mb:.0f} MB (goal < {GOAL_PEAK_MB})")
                if not n:
                    failures.append(f"{kind}: /healthz not measured: no probe during the {got['seconds']:.2f} s flood "
                                    "(more --uploads make it last longer)")
                elif not p99 <= GOAL_HEALTH_P99_S:  # inf (a failed probe) misses the goal
                    failures.append(f"{kind}: /healthz p99 {p99:.2f} s (goal < {GOAL_HEALTH_P99_S:g})")
                if counts["other 5xx"] or counts["dropped"]:
                    failures.append(f"{kind}: {counts['other 5xx']} 5xx other than 503, {counts['dropped']} dropped")
                if refusal is not None and counts["200"]:
                    failures.append(f"{kind}: {counts['200']} read (200), where the decoder must refuse it")
                if refusal is not None and (wrong := sorted(r for r in got["refusals"] if refusal not in r)):
                    failures.append(f"{kind}: refused for another reason than {refusal!r}: {wrong[0][:300]}")
            # what the flood leaves behind: decodes already running finish, queued work of gone clients is dropped
            start = time.perf_counter()
            r = httpx.post(f"{url}/v1/predict", files={"file": ("x.jpeg", images[0], "image/jpeg")}, timeout=600)
            recovery = time.perf_counter() - start
            results["recovery_s"] = recovery
            print(f"after the floods, a plain prediction was answered ({r.status_code}) in {recovery:.1f} s",
                  flush=True)
            log_mb = log.stat().st_size / MB
            print(f"server log: {log_mb:.2f} MB, {sum(1 for _ in log.open('rb'))} lines, "
                  f"{log.read_text(errors='replace').count('Traceback')} tracebacks")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(results, default=float))
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Films that the coverage-guided fuzzer (benchmarks/fuzz_decode.py) found the decoder to mishandle, each reduced to
a few bytes changed in a film built here: each is refused with a reason that names what is wrong, at once."""

from __future__ import annotations

import time

import pytest
from pydicom import uid

from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import DecodeError
from tests.builders import dicom_bytes
from tests.test_dicom_faults import compressed_frame, encapsulated, phantom

NOT_TO_EOI = r"\(JPEG-LS Lossless Image Compression\): Invalid JPEG-LS stream: its last scan does not run to the EOI"


@pytest.mark.parametrize("cut", [30, 1745])
def test_a_jpeg_ls_frame_cut_short_is_refused_before_charls_spends_seconds_on_it(cut: int) -> None:
    """CharLS took 3.4 s of CPU to refuse this 64 x 64 frame cut 5 bytes into its scan (or halfway), whatever size
    the header gave, in a decode thread nothing can stop: a few such uploads held every decode slot."""
    film = phantom(64, 64)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    started = time.process_time()
    with pytest.raises(DecodeError, match=NOT_TO_EOI):
        read_gray(encapsulated(dicom_bytes(film), [frame[:cut]], uid.JPEGLSLossless))
    assert time.process_time() - started < 1.0


def test_a_jpeg_ls_frame_with_bytes_after_its_eoi_is_refused() -> None:
    film = phantom(64, 64)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    with pytest.raises(DecodeError, match=NOT_TO_EOI):
        read_gray(encapsulated(dicom_bytes(film), [frame + frame[30:130]], uid.JPEGLSLossless))


@pytest.mark.parametrize("vr", [b"LO", b"DS"])
def test_a_transfer_syntax_uid_written_as_text_is_refused(vr: bytes) -> None:
    """Its value read as text, not a UID, the codestream checks of the syntax it names were skipped (a JPEG-LS frame
    cut short went to CharLS unchecked), and pydicom decoded the frame by it all the same."""
    film = phantom(64, 64)
    frame = compressed_frame(film, uid.JPEGLSLossless)
    data = encapsulated(dicom_bytes(film), [frame[:1745]], uid.JPEGLSLossless)
    tag = b"\x02\x00\x10\x00UI"  # (0002,0010) in the File Meta's explicit VR little endian
    assert data.count(tag) == 1
    with pytest.raises(DecodeError, match=rf"Transfer Syntax UID \(0002,0010\) is written as {vr.decode()}, not UI"):
        read_gray(data.replace(tag, tag[:4] + vr))

"""An animated PNG is refused as multi-frame DICOM is: Pillow read an APNG's default image while the browser behind
the service's page showed its animation, another film, beside the first one's score. A multi-picture JPEG (a phone's
Ultra HDR photo, a camera's JPEG with a preview) is read as its first picture, the one a browser shows."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data.decode import read_gray
from pneumoscan.data.pixels import DecodeError
from pneumoscan.data.readers import pillow


@pytest.fixture(scope="module")
def films(data_root: Path) -> tuple[Image.Image, Image.Image]:
    """Two real films of the same size: one normal, one pneumonia."""
    normal, pneumonia = (sorted((data_root / "train" / kind).glob("*.jpeg"))[0] for kind in ("NORMAL", "PNEUMONIA"))
    first = Image.open(normal).convert("L")
    return first, Image.open(pneumonia).convert("L").resize(first.size)


def saved(first: Image.Image, others: list[Image.Image], kind: str, **options: object) -> bytes:
    buf = io.BytesIO()
    first.save(buf, kind, save_all=True, append_images=others, **options)
    return buf.getvalue()


@pytest.mark.parametrize("hidden", [True, False], ids=["default image hidden", "default image the first frame"])
def test_an_animated_png_is_not_a_single_radiograph(films: tuple[Image.Image, Image.Image], hidden: bool) -> None:
    normal, pneumonia = films
    data = saved(normal, [pneumonia], "PNG", default_image=hidden)
    with pytest.raises(DecodeError, match=r"animated PNG \(APNG, 2 images\) is not a single radiograph"):
        read_gray(data)


def test_an_animation_of_one_frame_that_is_its_image_is_read(films: tuple[Image.Image, Image.Image]) -> None:
    """The frame control of a default image that is the animation's first frame comes before its IDAT: counted with
    the frames after it, a two-frame APNG was said to hold 3 images, and one whose only frame is its image was
    refused as animated."""
    normal, pneumonia = films
    two = saved(normal, [pneumonia], "PNG", default_image=False)
    end = two.index(b"fcTL", two.index(b"IDAT")) - 4  # the second frame's chunks follow the default image's IDAT
    one = _with_frames_said(two[:end] + two[two.index(b"IEND") - 4 :], 1)
    plain = io.BytesIO()
    normal.save(plain, "PNG")
    np.testing.assert_array_equal(read_gray(one), read_gray(plain.getvalue()))


def test_a_multi_picture_jpeg_is_read_as_its_first_picture(films: tuple[Image.Image, Image.Image]) -> None:
    """An Ultra HDR photo's gain map, or a camera's preview, is its second picture; the film is the first."""
    normal, pneumonia = films
    data = saved(normal, [pneumonia.resize((normal.width // 4, normal.height // 4))], "MPO")
    assert Image.open(io.BytesIO(data)).format == "MPO"
    first = io.BytesIO()
    normal.save(first, "JPEG")
    np.testing.assert_array_equal(read_gray(data), read_gray(first.getvalue()))


def test_one_picture_is_read(films: tuple[Image.Image, Image.Image]) -> None:
    normal, _ = films
    buf = io.BytesIO()
    normal.save(buf, "PNG")
    np.testing.assert_array_equal(read_gray(saved(normal, [], "PNG")), read_gray(buf.getvalue()))


def _with_chunk_twice(png: bytes, kind: bytes) -> bytes:
    """The PNG with its first ``kind`` chunk written twice over."""
    at = png.index(kind) - 4
    end = at + 12 + int.from_bytes(png[at : at + 4], "big")
    return png[:end] + png[at:end] + png[end:]


def _with_frames_said(png: bytes, frames: int) -> bytes:
    """The PNG with its acTL chunk saying ``frames`` frames."""
    at = png.index(b"acTL")
    body = frames.to_bytes(4, "big") + png[at + 8 : at + 12]
    return png[: at + 4] + body + zlib.crc32(b"acTL" + body).to_bytes(4, "big") + png[at + 16 :]


@pytest.mark.parametrize("said", ["two acTL chunks", "acTL of 0 frames"])
def test_an_animation_pillow_does_not_count_is_refused_from_its_chunks(said: str) -> None:
    """Pillow counts an APNG's frames from its acTL, and passed over one it took for invalid: it read the default
    image, where Firefox plays the first of two acTL chunks, and so shows the frame after it. A PNG with a frame after
    its default image is refused whatever its acTL says; one whose acTL counts frames it does not hold is read."""
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    first, other = Image.fromarray(ramp), Image.fromarray(255 - ramp)
    hidden = saved(first, [other], "PNG", default_image=True)
    data = _with_chunk_twice(hidden, b"acTL") if said == "two acTL chunks" else _with_frames_said(hidden, 0)
    with Image.open(io.BytesIO(data)) as im:
        assert getattr(im, "n_frames", 1) == 1
    with pytest.raises(DecodeError, match=r"animated PNG \(APNG, 2 images\) is not a single radiograph"):
        read_gray(data)
    alone = saved(first, [], "PNG")
    one = alone[:33] + hidden[33 : hidden.index(b"acTL") + 16] + alone[33:]  # an acTL of 2 frames, none but IDAT
    np.testing.assert_array_equal(read_gray(_with_frames_said(one, 2)), ramp)


def test_frames_without_an_animation_control_before_the_image_are_a_still_png() -> None:
    """Without an acTL before its IDAT a PNG is no animation (the APNG rule; browsers and Pillow show its image): one
    with a stray frame after its image was refused as animated. So is one whose acTL comes after its image."""
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    hidden = saved(Image.fromarray(ramp), [Image.fromarray(255 - ramp)], "PNG", default_image=True)
    at = hidden.index(b"acTL") - 4
    actl, still = hidden[at : at + 20], hidden[:at] + hidden[at + 20 :]
    np.testing.assert_array_equal(read_gray(still), ramp)
    end = still.index(b"IEND") - 4
    np.testing.assert_array_equal(read_gray(still[:end] + actl + still[end:]), ramp)


def test_a_png_has_its_chunks_walked_once_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk count and the image count walked a PNG's chunks twice a read, a seek and a read a chunk each time;
    one walk gives both. The walk itself runs (counted, not replaced), and still refuses the animation."""
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    walks = []
    walk = pillow._png_chunks
    monkeypatch.setattr(pillow, "_png_chunks", lambda fp: walks.append(1) or walk(fp))
    np.testing.assert_array_equal(read_gray(saved(Image.fromarray(ramp), [], "PNG")), ramp)
    assert len(walks) == 1
    with pytest.raises(DecodeError, match=r"animated PNG \(APNG, 2 images\)"):
        read_gray(saved(Image.fromarray(ramp), [Image.fromarray(255 - ramp)], "PNG", default_image=True))
    assert len(walks) == 2

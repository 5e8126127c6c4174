"""EXIF orientation: a JPEG stored on its side and tagged Orientation=6 reaches the model upright, from every source
(as ``datasets``' Image feature and lmms-eval hand it over)."""

import io
import json

import pytest
from PIL import Image

import llava_accel as la
from llava_accel.preprocessing import load_image
from llava_accel.tasks.folder import load_folder
from llava_accel.tasks.sources import open_image

ORIENTATION = 0x0112


def _upright() -> Image.Image:
    """48 wide, 24 high: red left half, blue right half (JPEG keeps these flat colours close)."""
    image = Image.new("RGB", (48, 24), (220, 20, 20))
    image.paste((20, 20, 220), (24, 0, 48, 24))
    return image


def _tagged_jpeg() -> bytes:
    """The upright picture stored as a camera does when held turned: pixels rotated 90 degrees counter-clockwise,
    with Orientation=6 ("rotate 90 degrees clockwise to display")."""
    stored = _upright().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _assert_upright(image: Image.Image) -> None:
    assert image.size == (48, 24) and image.mode == "RGB"
    left, right = image.getpixel((4, 12)), image.getpixel((44, 12))
    assert left[0] > 150 > left[2] and right[2] > 150 > right[0]  # red on the left, blue on the right


@pytest.fixture
def jpeg_path(tmp_path):
    path = tmp_path / "turned.jpg"
    path.write_bytes(_tagged_jpeg())
    with Image.open(path) as raw:
        assert raw.size == (24, 48) and raw.getexif()[ORIENTATION] == 6  # on its side as stored
    return path


def test_every_way_of_opening_an_image_applies_the_tag(jpeg_path):
    _assert_upright(load_image(jpeg_path))  # a path (generate(images=[path]))
    with Image.open(jpeg_path) as opened:  # a PIL image opened by the caller
        _assert_upright(load_image(opened))
    _assert_upright(open_image({"bytes": jpeg_path.read_bytes(), "path": None}))  # datasets rows, undecoded
    _assert_upright(open_image("turned.jpg", jpeg_path.parent))  # a task folder's relative path
    _assert_upright(load_image(load_image(jpeg_path)))  # already upright: unchanged (the tag is gone)


def test_task_and_data_folders_read_it_upright(jpeg_path):
    folder = jpeg_path.parent
    row = {"image": "turned.jpg", "question": "Which side is red?", "choices": ["left", "right"], "answer": 0,
           "hint": ""}
    (folder / "samples.jsonl").write_text(json.dumps({**row, "prompt": "p", "references": ["r"]}) + "\n")
    _assert_upright(la.load_task("scienceqa", source=folder)[0].image)
    _assert_upright(load_folder(folder)[0].image)


def test_generate_feeds_the_upright_pixels(jpeg_path):
    backend = la.load_backend("cpu")
    from_path = backend.prepare([jpeg_path], ["What is shown?"])["pixel_values"]
    upright = backend.prepare([load_image(jpeg_path)], ["What is shown?"])["pixel_values"]
    with Image.open(jpeg_path) as raw:  # the pixels as stored, without the tag that says how to turn them
        untagged = Image.frombytes("RGB", raw.size, raw.convert("RGB").tobytes())
    stored = backend.prepare([untagged], ["What is shown?"])["pixel_values"]
    assert (from_path == upright).all() and not (from_path == stored).all()

"""EXIF orientation: headers read like PIL, indexes put into the frame datasets decodes, broken files named."""

import io
import json
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from qwen_instruct_det import boxes as B
from qwen_instruct_det.data import images
from qwen_instruct_det.data.coco import CocoFormatError, load_coco
from qwen_instruct_det.data.synthetic import COLOURS, SynthOptions, make_annotations, make_synthetic_coco, write_split

ORIENTATION = 0x0112
SQUARE = 3  # category id of "square" in synthetic.CATEGORIES


def _decode(path) -> Image.Image:
    """The picture the model sees: datasets' own Image feature decoding the file."""
    import datasets

    return datasets.Image().decode_example({"path": str(path), "bytes": None})


def _jpeg(size=(64, 48), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, "JPEG", **save)
    return buf.getvalue()


def _exif(orientation=None, order="<", kind=3, extra_tags=0) -> bytes:
    """A hand-made Exif segment payload: IFD0 with ``extra_tags`` Software-like entries then Orientation."""
    entries = [struct.pack(order + "HHL4s", 0x0131 + k, 2, 4, b"abc\x00") for k in range(extra_tags)]
    if orientation is not None:
        value = struct.pack(order + "H", orientation) + b"\x00\x00" if kind == 3 else struct.pack(order + "L", orientation)
        entries.append(struct.pack(order + "HHL", ORIENTATION, kind, 1) + value)
    head = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "L", 8)
    return b"Exif\x00\x00" + head + struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert one APPn segment right after the SOI marker."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _xmp(orientation: int) -> bytes:
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="{orientation}"/>'
            "</rdf:RDF></x:xmpmeta>").encode()


@pytest.fixture(scope="module")
def header_files(tmp_path_factory):
    """Files whose headers exercise every branch of the reader: name -> path."""
    d = tmp_path_factory.mktemp("headers")
    files = {}
    for o in range(1, 9):
        ex = Image.Exif()
        ex[ORIENTATION] = o
        files[f"pil_o{o}.jpg"] = _jpeg((70, 40), exif=ex)
    plain = _jpeg((50, 30))
    files.update({
        "no_exif.jpg": plain,
        "big_endian_o6.jpg": _with_segment(plain, 0xE1, _exif(6, ">", extra_tags=3)),
        "little_endian_o8_after_tags.jpg": _with_segment(plain, 0xE1, _exif(8, "<", extra_tags=5)),
        "exif_without_orientation.jpg": _with_segment(plain, 0xE1, _exif(None, extra_tags=2)),
        "orientation_0.jpg": _with_segment(plain, 0xE1, _exif(0)),
        "orientation_9.jpg": _with_segment(plain, 0xE1, _exif(9)),
        "orientation_long_type.jpg": _with_segment(plain, 0xE1, _exif(5, kind=4)),
        "xmp_only_o6.jpg": _with_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + _xmp(6)),
        "exif_o3_beats_xmp_o6.jpg": _with_segment(
            _with_segment(plain, 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + _xmp(6)), 0xE1, _exif(3)),
        "bad_tiff_header.jpg": _with_segment(plain, 0xE1, b"Exif\x00\x00XX*\x00\x08\x00\x00\x00"),
        "grey_progressive_o7.jpg": _with_segment(_jpeg((33, 21), "L", progressive=True), 0xE1, _exif(7)),
        "cmyk_o5.jpg": _with_segment(_jpeg((24, 40), "CMYK"), 0xE1, _exif(5)),
    })
    buf = io.BytesIO()
    ex = Image.Exif()
    ex[ORIENTATION] = 6
    Image.new("RGB", (31, 17)).save(buf, "PNG", exif=ex)
    files["png_o6.png"] = buf.getvalue()
    paths = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        paths[name] = d / name
    return paths


def _pil_header(path):
    with Image.open(path) as im:
        o = im.getexif().get(ORIENTATION)
        return (*im.size, o if isinstance(o, int) and 2 <= o <= 8 else 1)


def test_read_headers_agrees_with_pil_and_with_datasets_decoding(header_files):
    names = sorted(header_files)
    heads = images.read_headers([header_files[n] for n in names], workers=1, progress=False)
    got = dict(zip(names, zip(heads.widths.tolist(), heads.heights.tolist(), heads.orientations.tolist())))
    for name in names:
        assert got[name] == _pil_header(header_files[name]), name
        shown = _decode(header_files[name]).size
        assert tuple(int(v) for v in B.oriented_size(*got[name])) == shown, name
    # hand-checked expectations, so that agreeing with PIL is not agreeing on nothing
    assert got["pil_o6.jpg"] == (70, 40, 6) and got["big_endian_o6.jpg"] == (50, 30, 6)
    assert got["xmp_only_o6.jpg"][2] == 6 and got["exif_o3_beats_xmp_o6.jpg"][2] == 3
    assert got["orientation_9.jpg"][2] == 1 and got["orientation_long_type.jpg"][2] == 5
    assert got["png_o6.png"] == (31, 17, 6) and got["cmyk_o5.jpg"] == (24, 40, 5)


def test_the_fast_jpeg_path_answers_for_plain_jpegs_and_defers_the_rest(header_files):
    # the comparison above is only worth something if the fast path actually ran on the ordinary files
    def fast(name):
        with open(header_files[name], "rb") as f:
            return images._jpeg_header(f)

    for name in ["pil_o1.jpg", "pil_o6.jpg", "no_exif.jpg", "big_endian_o6.jpg", "exif_o3_beats_xmp_o6.jpg", "grey_progressive_o7.jpg"]:
        assert fast(name) == _pil_header(header_files[name]), name
    for name in ["xmp_only_o6.jpg", "orientation_long_type.jpg", "bad_tiff_header.jpg", "png_o6.png"]:
        assert fast(name) is None, name


def test_read_headers_in_threads_matches_one_thread(tmp_path):
    plain = {w: _jpeg((w, 30)) for w in range(20, 25)}
    tagged = [_with_segment(_jpeg((41, 9)), 0xE1, _exif(6)), _with_segment(_jpeg((8, 8)), 0xE1, _exif(2))]
    paths = []
    for k in range(1100):  # a few chunks of work
        paths.append(tmp_path / f"{k}.jpg")
        paths[-1].write_bytes(tagged[k % 3 - 1] if k % 3 else plain[20 + k % 5])
    one = images.read_headers(paths, workers=1, progress=False)
    many = images.read_headers(paths, workers=3, progress=False)
    for a, b in zip(one, many):
        assert np.array_equal(a, b)
    assert one.orientations[:3].tolist() == [1, 6, 2] and one.widths[:3].tolist() == [20, 41, 8]


def test_read_headers_names_every_file_it_cannot_open(tmp_path, header_files):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(_jpeg()[:40])
    paths = [header_files["pil_o1.jpg"], tmp_path / "empty.jpg", tmp_path / "notes.jpg", tmp_path / "cut.jpg", tmp_path / "gone.jpg"]
    with pytest.raises(images.BadImageError, match="4 of 5 image files cannot be opened") as err:
        images.read_headers(paths, progress=False)
    for name in ["empty.jpg", "notes.jpg", "cut.jpg", "gone.jpg"]:
        assert str(tmp_path / name) in str(err.value)
    assert err.value.paths == [str(p) for p in paths[1:]]


# --- orient_index -------------------------------------------------------------------------------


def _one_square(tmp_path, json_size, orientation, frame, box, crowd_box=None, colour=2):
    """A one-image data set: a filled square of COLOURS[colour] at ``box`` (in the JSON's frame)."""
    w, h = json_size
    data = make_annotations(1, seed=0, options=SynthOptions(min_objects=0, max_objects=0, empty_fraction=0, crowd_fraction=0))
    image = data["images"][0]
    image.update(width=w, height=h, _textured=False, _background=0)
    if orientation != 1:
        image.update(_orientation=orientation, _frame=frame)
    x1, y1, x2, y2 = box
    data["annotations"] = [{"id": 1, "image_id": image["id"], "category_id": SQUARE, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0, "segmentation": [], "_colour": colour}]
    if crowd_box is not None:
        x1, y1, x2, y2 = crowd_box
        data["annotations"].append({"id": 2, "image_id": image["id"], "category_id": SQUARE, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": 1.0, "iscrowd": 1, "segmentation": [], "_colour": 4})
    ann_file = write_split(tmp_path, "train", data)
    return load_coco(ann_file, tmp_path / "train2017")


def _covers_the_square(pixels: np.ndarray, box, colour) -> bool:
    """The box's inside is the square's colour and a ring just outside it is not."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    inside = pixels[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].astype(int)
    near = np.abs(inside - np.array(colour)).max(axis=-1) < 40
    ring = np.concatenate([pixels[y1 - 4, x1:x2], pixels[y2 + 3, x1:x2], pixels[y1:y2, x1 - 4], pixels[y1:y2, x2 + 3]]).astype(int)
    away = np.abs(ring - np.array(colour)).max(axis=-1) >= 40
    return inside.size > 0 and near.mean() > 0.98 and away.mean() > 0.98


@pytest.mark.parametrize("frame", ["stored", "displayed"])
def test_a_640x427_photo_with_orientation_6_gets_the_decoded_size_and_boxes(tmp_path, frame):
    # COCO's files describe the stored 640x427 pixels; a tool export describes the 427x640 picture
    json_size = (640, 427) if frame == "stored" else (427, 640)
    box = (100, 50, 260, 170)
    index = _one_square(tmp_path, json_size, 6, frame, box, crowd_box=(300, 200, 400, 260) if frame == "stored" else None)
    path = index.image_path(0)
    with Image.open(path) as im:
        assert im.size == (640, 427) and im.getexif()[ORIENTATION] == 6
    decoded = _decode(path)
    assert decoded.size == (427, 640)

    oriented, counts = images.orient_index(index, progress=False)
    assert (oriented.widths[0], oriented.heights[0]) == (427, 640)
    pixels = np.asarray(decoded.convert("RGB"))
    assert _covers_the_square(pixels, oriented.ann_xyxy[0], COLOURS[2])
    if frame == "stored":
        assert counts["exif_rotated_from_stored"] == 1 and counts["exif_already_displayed"] == 0
        # rotated 90 degrees clockwise: x' = 427 - y, y' = x; the crowd box turns with the rest
        assert oriented.ann_xyxy[0].tolist() == [427 - 170, 100, 427 - 50, 260]
        assert oriented.ann_crowd[1] and oriented.ann_xyxy[1].tolist() == [427 - 260, 300, 427 - 200, 400]
        assert not _covers_the_square(pixels, index.ann_xyxy[0], COLOURS[2])  # today's unrotated box misses it
    else:
        assert counts["exif_already_displayed"] == 1 and counts["exif_rotated_from_stored"] == 0
        assert oriented.ann_xyxy[0].tolist() == list(box)
    assert counts["exif_by_option_stored"] == counts["exif_by_option_displayed"] == counts["size_rescaled"] == 0


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("frame", ["stored", "displayed"])
def test_every_orientation_lands_on_the_drawing_when_the_option_matches_the_convention(tmp_path, orientation, frame):
    json_size = (120, 90) if frame == "stored" or orientation < 5 else (90, 120)
    index = _one_square(tmp_path, json_size, orientation, frame, (10, 20, 50, 45))
    oriented, counts = images.orient_index(index, exif_frame=frame, progress=False)
    decoded = np.asarray(_decode(index.image_path(0)).convert("RGB"))
    assert (oriented.widths[0], oriented.heights[0]) == (decoded.shape[1], decoded.shape[0])
    assert _covers_the_square(decoded, oriented.ann_xyxy[0], COLOURS[2])
    by_size = orientation >= 5  # a 90-degree turn of a non-square picture: the JSON size tells
    expected = "exif_rotated_from_stored" if by_size and frame == "stored" else "exif_already_displayed" if by_size else f"exif_by_option_{frame}"
    assert {k for k, v in counts.items() if v} == {expected}


def test_square_images_and_mirrors_follow_exif_frame(tmp_path):
    index = _one_square(tmp_path, (100, 100), 6, "stored", (10, 20, 40, 30))
    as_stored, counts = images.orient_index(index, progress=False)
    assert counts["exif_by_option_stored"] == 1 and as_stored.ann_xyxy[0].tolist() == [70, 10, 80, 40]
    as_shown, counts = images.orient_index(index, exif_frame="displayed", progress=False)
    assert counts["exif_by_option_displayed"] == 1 and as_shown.ann_xyxy[0].tolist() == [10, 20, 40, 30]
    with pytest.raises(ValueError, match="exif_frame='sideways'"):
        images.orient_index(index, exif_frame="sideways", progress=False)


def test_upright_images_are_unchanged(shapes_dir):
    index = load_coco(shapes_dir / "annotations" / "instances_val2017.json", shapes_dir / "val2017")
    oriented, counts = images.orient_index(index, progress=False)
    assert not any(counts.values())
    assert np.array_equal(oriented.ann_xyxy, index.ann_xyxy)
    assert np.array_equal(oriented.widths, index.widths) and np.array_equal(oriented.heights, index.heights)


def _shrink_json_width(ann_file, factor):
    data = json.loads(ann_file.read_text())
    for im in data["images"]:
        im["width"] = round(im["width"] * factor)
    for a in data["annotations"]:
        a["bbox"] = [a["bbox"][0] * factor, a["bbox"][1], a["bbox"][2] * factor, a["bbox"][3]]
    ann_file.write_text(json.dumps(data))


def test_a_json_size_matching_neither_frame_is_an_error_naming_the_file_or_is_rescaled(tmp_path):
    index = _one_square(tmp_path, (640, 427), 1, "stored", (100, 50, 260, 170))
    ann_file = tmp_path / "annotations" / "instances_train2017.json"
    _shrink_json_width(ann_file, 600 / 640)  # annotated on a 600-wide copy of the picture
    shrunk = load_coco(ann_file, tmp_path / "train2017")
    with pytest.raises(CocoFormatError) as err:
        images.orient_index(shrunk, progress=False)
    message = str(err.value)
    assert str(ann_file) in message and index.image_path(0) in message
    assert "JSON 600x427" in message and "file 640x427 stored" in message and "on_mismatch='rescale'" in message

    rescaled, counts = images.orient_index(shrunk, on_mismatch="rescale", progress=False)
    assert counts["size_rescaled"] == 1 and (rescaled.widths[0], rescaled.heights[0]) == (640, 427)
    assert np.allclose(rescaled.ann_xyxy, index.ann_xyxy)


def test_synthetic_option_tags_photos_and_keeps_the_json(tmp_path):
    plain = make_annotations(40, seed=5)
    tagged = make_annotations(40, seed=5, options=SynthOptions(exif_fraction=0.5))
    strip = [{k: v for k, v in im.items() if not k.startswith("_")} for im in tagged["images"]]
    assert strip == [{k: v for k, v in im.items() if not k.startswith("_")} for im in plain["images"]]
    assert tagged["annotations"] == plain["annotations"]
    assert 10 < sum("_orientation" in im for im in tagged["images"]) < 30

    for frame in ("stored", "displayed"):
        root = make_synthetic_coco(tmp_path / frame, train=30, val=0, seed=1,
                                   options=SynthOptions(exif_fraction=0.7, exif_json_frame=frame))
        index = load_coco(root / "annotations" / "instances_train2017.json", root / "train2017")
        oriented, counts = images.orient_index(index, exif_frame=frame, progress=False)
        assert sum(counts.values()) > 10
        for i in range(oriented.num_images):
            assert _decode(oriented.image_path(i)).size == (oriented.widths[i], oriented.heights[i])


# --- decoding -----------------------------------------------------------------------------------


def test_verify_images_and_open_image_name_a_truncated_jpeg(tmp_path, shapes_dir):
    good = sorted((shapes_dir / "val2017").iterdir())[:3]
    data = good[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    images.verify_images(good, progress=False)  # decodes, no error
    images.read_headers([cut], progress=False)  # its header is whole: only decoding finds the damage
    with pytest.raises(images.BadImageError, match=r"1 of 4 image files cannot be decoded") as err:
        images.verify_images([*good, cut], workers=2, progress=False)
    assert str(cut) in str(err.value) and err.value.paths == [str(cut)]
    with pytest.raises(images.BadImageError, match="cut.jpg: cannot decode"):
        images.open_image(cut)
    with pytest.raises(FileNotFoundError, match="gone.jpg: image file not found"):
        images.open_image(tmp_path / "gone.jpg")


def test_open_image_is_what_datasets_decodes(tmp_path):
    index = _one_square(tmp_path, (64, 40), 8, "stored", (5, 5, 20, 30))
    shutil.copy(index.image_path(0), tmp_path / "copy.jpg")
    img = images.open_image(tmp_path / "copy.jpg")
    assert img.mode == "RGB" and img.size == (40, 64)
    assert np.array_equal(np.asarray(img), np.asarray(_decode(tmp_path / "copy.jpg").convert("RGB")))


def test_decode_named_reads_rows_like_datasets_and_names_a_broken_file_stored_by_path_or_as_bytes(tmp_path, shapes_dir):
    import datasets

    good = sorted((shapes_dir / "val2017").iterdir())[0]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    features = datasets.Features({"images": datasets.List(datasets.Image()), "n": datasets.Value("int32")})
    by_path = datasets.Dataset.from_dict({"images": [[str(good)], [str(cut)]], "n": [0, 1]}, features=features)
    rows = images.decode_named(by_path)
    assert rows.column_names == ["images", "n"] and rows[0]["n"] == 0
    assert np.array_equal(np.asarray(rows[0]["images"][0]), np.asarray(by_path[0]["images"][0].convert("RGB")))
    with pytest.raises(OSError, match="truncated"):  # datasets' own decoding names no file
        by_path[1]["images"][0].load()
    with pytest.raises(images.BadImageError, match="cut.jpg: cannot decode"):
        rows[1]
    embedded = datasets.Dataset.from_dict({"images": [[{"path": "photos/cut.jpg", "bytes": cut.read_bytes()}]], "n": [1]}, features=features)
    with pytest.raises(images.BadImageError, match="photos/cut.jpg: cannot decode") as err:
        next(iter(images.decode_named(embedded)))
    assert err.value.paths == ["photos/cut.jpg"]


# ---------------------------------------------------------------- every mode Pillow opens, decoded to its 8-bit look


def _png16(path, values: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow writes only greyscale at 16 bits): colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = values.shape[:2]
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


GREY = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (6, 1))  # the 8-bit look every file below should decode to
WIDE = (GREY.astype(np.uint32) * 257).astype(np.uint16)  # the same grey at 16 bits (v * 257 = v / 255 of 65535)


def _saved(mode: str, tmp_path):
    from PIL import Image

    grey = Image.fromarray(GREY, "L")
    if mode == "I;16":
        path = tmp_path / "wide.png"
        Image.fromarray(WIDE).save(path)  # Pillow opens 16-bit grey PNG as I;16
    elif mode == "I;16 tiff":
        path = tmp_path / "wide.tiff"
        Image.fromarray(WIDE).save(path)
    elif mode == "I":
        path = tmp_path / "wide.pgm"  # a 16-bit PGM opens as I (32-bit integers)
        Image.fromarray(WIDE).save(path)
    elif mode in ("LA16", "RGB16", "RGBA16"):
        path = tmp_path / f"{mode}.png"
        channels = {"LA16": [WIDE, np.full_like(WIDE, 65535)], "RGB16": [WIDE] * 3, "RGBA16": [WIDE] * 3 + [np.full_like(WIDE, 65535)]}
        _png16(path, np.stack(channels[mode], axis=-1), {"LA16": 4, "RGB16": 2, "RGBA16": 6}[mode])
    elif mode == "F":
        path = tmp_path / "float.tiff"
        Image.fromarray(GREY.astype(np.float32) / 255, "F").save(path)
    else:
        path = tmp_path / f"{mode}.{'png' if mode in ('1', 'L', 'LA', 'P', 'RGB', 'RGBA') else 'tiff'}"
        grey.convert(mode).save(path)
    return path


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I;16", "I;16 tiff", "I",
                                  "LA16", "RGB16", "RGBA16", "F"])
def test_every_mode_decodes_to_its_8_bit_look(mode, tmp_path):
    """A 16-bit greyscale PNG was trained, predicted and drawn all white: PIL's convert('RGB') clips it at 255."""
    from PIL import Image

    path = _saved(mode, tmp_path)
    shown = np.asarray(images.open_image(path))
    assert shown.shape == (*GREY.shape, 3) and shown.dtype == np.uint8
    expected = GREY if mode != "1" else np.where(GREY >= 128, 255, 0)  # 1-bit: black or white, as dithering-free PIL stores it
    if mode == "1":
        assert set(np.unique(shown)) <= {0, 255}
    else:
        assert np.abs(shown.astype(int) - expected[..., None]).max() <= 3, (Image.open(path).mode, shown[0, ::8, 0])
    assert np.asarray(images.open_feature_image({"path": str(path), "bytes": None})).tolist() == shown.tolist()


def test_a_picture_out_of_its_modes_range_is_refused_naming_the_file(tmp_path):
    from PIL import Image

    path = tmp_path / "hot.tiff"
    Image.fromarray(np.full((4, 4), 3.5, dtype=np.float32), "F").save(path)
    with pytest.raises(images.BadImageError, match=r"hot\.tiff.*outside 0\.\.1"):
        images.open_image(path)

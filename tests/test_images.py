"""Image files for prediction (dabdetr.data.images): listing sources, aspect-ratio batches, EXIF orientation."""

import numpy as np
import pytest
from PIL import ExifTags, Image

from dabdetr.data import make_transforms
from dabdetr.data.collate import collate_detection
from dabdetr.data.images import ImageFiles, aspect_ratio_batches, image_size, list_images, open_image


def write_images(folder, sizes):
    folder.mkdir(exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        paths.append(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
        Image.new("RGB", (width, height), (i * 40, 0, 0)).save(paths[-1])
    return [str(p) for p in paths]


def test_list_images_takes_files_folders_and_globs(tmp_path):
    paths = write_images(tmp_path / "photos", [(64, 48), (48, 64), (80, 40)])
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    assert list_images([str(tmp_path / "photos")]) == paths
    assert list_images([str(tmp_path / "photos" / "*.png")]) == [paths[1]]
    assert list_images([paths[2], str(tmp_path / "photos"), paths[0]]) == paths  # sorted, no repeats
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.jpg"):
        list_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="no image files .* in .*nothing"):
        (tmp_path / "nothing").mkdir()
        list_images([str(tmp_path / "nothing")])
    with pytest.raises(FileNotFoundError, match=r"no image files .* in .*\*.bmp"):
        list_images([str(tmp_path / "photos" / "*.bmp")])


def test_aspect_ratio_batches_group_similar_shapes():
    sizes = [(100, 200), (200, 100), (110, 200), (210, 100), (100, 100)]  # (height, width)
    batches = aspect_ratio_batches(sizes, 2)
    assert sorted(i for batch in batches for i in batch) == list(range(5))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert batches == [[0, 2], [4, 1], [3]]  # landscapes together, then square + portrait, then the tallest
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        aspect_ratio_batches(sizes, 0)


def test_image_files_batch_with_less_padding_when_grouped(tmp_path):
    paths = write_images(tmp_path / "photos", [(96, 48), (48, 96), (100, 50), (50, 100)])
    dataset = ImageFiles(paths, make_transforms(False, [48], 100))
    assert dataset.sizes == [(48, 96), (96, 48), (50, 100), (100, 50)]
    pixels, target = dataset[1]
    assert pixels.shape == (3, 96, 48) and target["index"] == 1 and target["orig_size"].tolist() == [96, 48]

    def padding(batches):
        return sum(int(collate_detection([dataset[i] for i in batch])[1].sum()) for batch in batches)

    grouped, in_order = aspect_ratio_batches(dataset.sizes, 2), [[0, 1], [2, 3]]
    assert padding(grouped) == 0 < padding(in_order)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        ImageFiles([str(bad)], make_transforms(False, [48], 100))


# EXIF orientation -> the corner of the displayed image where the stored top-left pixel lands
# (from the EXIF spec's "0th row / 0th column" table), and whether width and height swap.
ORIENTATIONS = {1: ("top", "left", False), 2: ("top", "right", False), 3: ("bottom", "right", False),
                4: ("bottom", "left", False), 5: ("top", "left", True), 6: ("top", "right", True),
                7: ("bottom", "right", True), 8: ("bottom", "left", True)}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_photos_are_read_upright_as_their_exif_orientation_says(tmp_path, orientation):
    stored = Image.new("RGB", (64, 48), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # a red block at the stored top-left
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = tmp_path / "photo.jpg"
    stored.save(path, quality=100, exif=exif)
    row, column, swapped = ORIENTATIONS[orientation]
    height, width = (64, 48) if swapped else (48, 64)
    assert image_size(str(path)) == (height, width)
    upright = open_image(str(path), upright=True)
    assert upright.size == (width, height)
    y = 4 if row == "top" else height - 5
    x = 4 if column == "left" else width - 5
    assert upright.getpixel((x, y))[0] > 200 and upright.getpixel((width - 1 - x, height - 1 - y))[0] < 160
    assert open_image(str(path)).size == (64, 48)  # datasets: the stored pixels, as their annotations
    _, target = ImageFiles([str(path)], make_transforms(False, [48], 100))[0]
    assert target["orig_size"].tolist() == [height, width]


def test_16_bit_grey_is_scaled_to_8_bits_and_float_images_are_refused(tmp_path):
    values = np.linspace(0, 65535, 48 * 64).round().astype(np.uint16).reshape(48, 64)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    rgb = np.asarray(open_image(str(tmp_path / "grey16.png")))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = np.floor(values / 65535 * 255 + 0.5)  # the 16-bit range onto 8 bits, not clipped at 255
    assert np.abs(rgb[..., 0] - expected).max() <= 1 and (rgb[..., 0] == rgb[..., 2]).all()
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif: a floating-point image \(mode F\)"):
        open_image(str(tmp_path / "float.tif"))


def test_an_image_past_pils_size_limit_is_named(tmp_path, monkeypatch):
    Image.new("RGB", (100, 100)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # PIL refuses above twice this: a decompression bomb
    for read in (image_size, open_image):
        with pytest.raises(ValueError, match=r"cannot decode image .*huge.png: Image size \(10000 pixels\) exceeds"):
            read(str(tmp_path / "huge.png"))

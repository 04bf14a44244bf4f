"""ImageNet validation loader on a tiny folder made here with PIL: order by file name, labels
by file name, robustml's centre square crop, and the resize."""

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL.Image")

from obfgrad.data.imagenet import centre_crop_box, load_imagenet_val, read_labels_file  # noqa: E402


def make_image(path, width, height, mode="RGB"):
    # left third red, middle third green, right third blue: the crop is visible in the result
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 3, 0] = 255
    pixels[:, width // 3 : 2 * width // 3, 1] = 255
    pixels[:, 2 * width // 3 :, 2] = 255
    image = PIL.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


@pytest.fixture
def val_folder(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    make_image(folder / "ILSVRC2012_val_00000003.png", 90, 30)  # wide
    make_image(folder / "ILSVRC2012_val_00000001.png", 30, 60)  # tall
    make_image(folder / "ILSVRC2012_val_00000002.png", 40, 40, mode="L")  # greyscale
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "val.txt").write_text(
        "ILSVRC2012_val_00000001.png 65\nval/ILSVRC2012_val_00000002.png 970\n\nILSVRC2012_val_00000003.png 1\n"
    )
    return tmp_path


def test_centre_crop_box_matches_robustml_offsets():
    assert centre_crop_box(90, 30) == (30, 0, 60, 30)
    assert centre_crop_box(30, 61) == (0, 15, 30, 45)
    assert centre_crop_box(7, 7) == (0, 0, 7, 7)


def test_images_sorted_by_name_with_labels_by_name(val_folder):
    images, labels = load_imagenet_val(val_folder, size=12, resample="nearest")
    assert images.shape == (3, 3, 12, 12) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [65, 970, 1]
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_wide_image_keeps_only_its_green_middle(val_folder):
    images, _ = load_imagenet_val(val_folder, size=10, resample="nearest")
    wide = images[2]  # 90×30: the centred 30×30 square is exactly the green third
    torch.testing.assert_close(wide[1], torch.ones(10, 10))
    torch.testing.assert_close(wide[0] + wide[2], torch.zeros(10, 10))


def test_greyscale_becomes_three_equal_channels(val_folder):
    images, _ = load_imagenet_val(val_folder, size=8)
    grey = images[1]
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])


def test_resize_matches_pil_on_the_crop(val_folder):
    images, _ = load_imagenet_val(val_folder, size=17, resample="bilinear")
    with PIL.open(val_folder / "val" / "ILSVRC2012_val_00000001.png") as image:
        expected = image.crop((0, 15, 30, 45)).resize((17, 17), PIL.BILINEAR)
    expected = torch.from_numpy(np.asarray(expected, np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(images[0], expected)


def test_limit_and_explicit_labels_file(val_folder):
    labels_file = val_folder / "other.txt"
    labels_file.write_text("ILSVRC2012_val_00000001.png 5\nILSVRC2012_val_00000002.png 6\n")
    images, labels = load_imagenet_val(val_folder / "val", labels_file, limit=2, size=4)
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [5, 6]


def test_missing_label_and_bad_lines_are_reported(val_folder):
    labels_file = val_folder / "partial.txt"
    labels_file.write_text("ILSVRC2012_val_00000001.png 5\n")
    with pytest.raises(ValueError, match="no label for 2 image"):
        load_imagenet_val(val_folder, labels_file, size=4)
    labels_file.write_text("ILSVRC2012_val_00000001.png five\n")
    with pytest.raises(ValueError, match="not an integer"):
        read_labels_file(labels_file)
    with pytest.raises(FileNotFoundError, match="labels_file"):
        load_imagenet_val(val_folder, val_folder / "absent.txt")
    with pytest.raises(ValueError, match="resample"):
        load_imagenet_val(val_folder, resample="box")

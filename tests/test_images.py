"""Reading images of every kind users have: one convention out, clear errors for bad files."""
import cv2
import numpy as np
import pytest
import torch

from data.images import ImageError, list_images, read_image, to_image, to_tensor, write_png


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)


def test_rgb_round_trip(tmp_path, rgb):
    write_png(tmp_path / "a.png", rgb)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(to_image(to_tensor(rgb)), rgb)


def test_grayscale_rgba_and_16_bit(tmp_path, rgb):
    gray = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert np.array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)

    deep = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "deep.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)


def test_bad_files_raise_one_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="broken.png.*corrupt"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ImageError, match="empty.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_folders(tmp_path, rgb):
    with pytest.raises(ImageError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="holds no images"):
        list_images(tmp_path)
    write_png(tmp_path / "b.png", rgb)
    write_png(tmp_path / "a.png", rgb)
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]


def test_to_image_clamps_and_rounds():
    tensor = torch.tensor([[-3.0, 254.6], [0.4, 300.0]]).expand(3, 2, 2)
    assert to_image(tensor)[:, :, 0].tolist() == [[0, 255], [0, 255]]

"""data/plots.py: every figure is written as a PNG of the size it asks for, into a folder made
when missing, and a figure whose drawing fails is closed and writes nothing."""
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from data import plots


def _size(path) -> tuple:
    return matplotlib.image.imread(path).shape[:2]


def test_each_figure_is_a_png_of_its_size_in_a_new_folder(tmp_path):
    plots.plot_curves(tmp_path / "a" / "curves.png", [1, 2, 3], {"ours": [20.0, 21.0, 21.5], "b": [19.0]},
                      xlabel="epoch", ylabel="PSNR (dB)", title="t")
    plots.plot_metric_by_setting(tmp_path / "b" / "settings.png", [f"s{i}" for i in range(12)],
                                 {"ours": list(np.linspace(25, 30, 12))}, xlabel="setting", ylabel="PSNR (dB)")
    crops = [[np.zeros((8, 8, 3), np.uint8)] * 3, [np.full((8, 8, 3), 255, np.uint8)] * 2]
    plots.plot_image_grid(tmp_path / "c" / "grid.png", crops, [["x", "y", "z"], ["u", "v"]],
                          row_labels=["r"])
    assert _size(tmp_path / "a" / "curves.png") == (400, 600)         # 6 x 4 inches at 100 dpi
    assert _size(tmp_path / "b" / "settings.png") == (400, 720)       # 0.6 inch per setting
    assert _size(tmp_path / "c" / "grid.png") == (500, 720)           # 2.4 x 2.5 inches per crop
    assert plt.get_fignums() == []


def test_a_figure_that_fails_to_draw_is_closed_and_writes_nothing(tmp_path):
    with pytest.raises(IndexError):
        plots.plot_image_grid(tmp_path / "grid.png", [[np.zeros((8, 8, 3), np.uint8)] * 2], [["only one"]])
    assert plt.get_fignums() == [] and not (tmp_path / "grid.png").exists()

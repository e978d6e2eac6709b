"""The CSC codebook's health during training: usage per epoch and the collapse warning, on a
hand-built collapsed codebook and on a live one."""
import math

import pytest
import torch

from helpers import collapsed_codebook, tiny
from model.codebook_health import CodebookMonitor, CollapseWatch, query_codebook
from model.lpe import DegradationCodebook


def an_epoch(monitor: CodebookMonitor, codebook: DegradationCodebook, batches: int = 3):
    with monitor.recording():
        for seed in range(batches):
            codebook(torch.randn(4, codebook.entries.shape[1], generator=torch.Generator().manual_seed(seed)))
    return monitor.epoch_usage(torch.device("cpu"))


def test_a_collapsed_codebook_is_measured_and_warned_about_once_it_lasts():
    codebook = collapsed_codebook()
    monitor, watch = CodebookMonitor(codebook), CollapseWatch(share=0.02, epochs=3)
    warnings = []
    for _ in range(4):
        usage = an_epoch(monitor, codebook)
        assert usage["rows_for_mass"] == 1 and usage["perplexity"] < 1.01 and usage["samples"] == 12
        assert usage["mass"][3] > 0.999 and usage["sample_entropy"] < 0.01
        warnings.append(watch.observe(usage))
    assert warnings[:2] == [None, None] and warnings[3] is None        # once, after 3 epochs
    assert warnings[2].startswith("the CSC codebook has collapsed to 1 row: 90% of its attention "
                                  "went to 1 of its 16 rows") and "--epochs_encoder" in warnings[2]


def test_a_live_codebook_is_not_collapsed_and_a_recovery_resets_the_count():
    torch.manual_seed(0)
    live = DegradationCodebook(16, 16)
    monitor, watch = CodebookMonitor(live), CollapseWatch(share=0.02, epochs=2)
    usage = an_epoch(monitor, live)
    assert usage["rows_for_mass"] > 4 and usage["perplexity"] > 4
    assert watch.observe(usage) is None and watch.streak == 0
    collapsed = {"rows": 1024, "rows_for_mass": 20, "mass_share": 0.9, "perplexity": 15.0}
    assert not CollapseWatch(share=0.02).collapsed({**collapsed, "rows_for_mass": 21})
    assert watch.observe(collapsed) is None and watch.streak == 1       # 20 <= 2% of 1024
    assert watch.observe(usage) is None and watch.streak == 0
    assert watch.observe(collapsed) is None
    assert "collapsed to 20 rows" in watch.observe(collapsed)


def test_only_forwards_while_recording_count_and_each_epoch_starts_afresh():
    codebook = collapsed_codebook()
    monitor = CodebookMonitor(codebook)
    codebook(torch.randn(5, 16))                                        # not recorded
    assert monitor.epoch_usage(torch.device("cpu")) is None
    assert an_epoch(monitor, codebook, batches=2)["samples"] == 8
    assert monitor.epoch_usage(torch.device("cpu")) is None
    assert not codebook._forward_hooks                                 # the hook is gone


@pytest.mark.parametrize("name, has", [("cdsr", True), ("cdsr-no-csc", False), ("dasr", False),
                                       ("kdsr-s-m", False)])
def test_the_monitored_codebook_is_the_query_encoders(name, has):
    model = tiny(name)
    codebook = query_codebook(model)
    assert (codebook is not None) == has
    if has:
        assert codebook is model.encoder.query_encoder.codebook
        usage = an_epoch(CodebookMonitor(codebook), codebook)
        assert usage["rows"] == 8 and math.isclose(sum(usage["mass"]), 1.0)

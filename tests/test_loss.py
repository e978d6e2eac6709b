"""The loss string and how the phases' outputs are scored."""
import pytest
import torch
import torch.nn.functional as F

from loss import build_loss, parse_loss_spec


def test_loss_string():
    assert parse_loss_spec("1*L1") == [(1.0, "L1")]
    assert parse_loss_spec("1*L1 + 0.5*MSE") == [(1.0, "L1"), (0.5, "MSE")]
    with pytest.raises(ValueError, match="unknown loss 'L3'.*L1, MSE"):
        parse_loss_spec("1*L3")
    with pytest.raises(ValueError, match="write WEIGHT\\*NAME"):
        parse_loss_spec("L1")


def test_each_phase_is_scored_by_what_it_outputs():
    criterion = build_loss("2*L1", c_weight=0.5)
    sr, hr = torch.rand(2, 3, 8, 8) * 255, torch.rand(2, 3, 8, 8) * 255
    logits, labels = torch.randn(2, 9), torch.zeros(2, dtype=torch.long)
    l1 = F.l1_loss(sr, hr)
    ce = F.cross_entropy(logits, labels)

    joint = criterion({"sr": sr, "logits": logits, "labels": labels}, hr)
    assert torch.allclose(joint["total"], 2 * l1 + 0.5 * ce)
    assert set(joint) == {"L1", "contrastive", "total"}
    assert torch.allclose(criterion({"logits": logits, "labels": labels}, hr)["total"], 0.5 * ce)
    assert torch.allclose(criterion({"sr": sr}, hr)["total"], 2 * l1)
    with pytest.raises(ValueError, match="neither"):
        criterion({}, hr)

import math

import pytest
import torch

from vadclip import VadCLIP, tiny_config
from vadclip.model.losses import contrast_loss, mil_align_loss, mil_loss, topk_mean, vadclip_loss
from vadclip.testing.reference import reference_forward, reference_loss


def test_topk_mean_hand_built():
    x = torch.zeros(2, 40)
    x[0, :20] = torch.arange(20, dtype=torch.float32)    # length 20 → k = 2 → mean(19, 18)
    x[1, :40] = torch.arange(40, dtype=torch.float32)    # length 33 → k = 3 → mean(32, 31, 30)
    out = topk_mean(x, torch.tensor([20, 33]))
    assert out.tolist() == pytest.approx([18.5, 31.0])


def test_mil_loss_hand_built():
    # one normal video (all logits 0 → p=0.5), one abnormal with top-1 logit large
    logits = torch.zeros(2, 8)
    logits[1, 3] = 20.0
    labels = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    loss = mil_loss(logits, labels, torch.tensor([8, 8]))          # k = 1
    expected = (-math.log(0.5) + -math.log(torch.sigmoid(torch.tensor(20.0)).item())) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mil_loss_ignores_padding():
    logits = torch.zeros(1, 8)
    logits[0, 6] = 50.0       # beyond the true length 4 → must not count
    labels = torch.tensor([[1.0, 0.0]])
    assert mil_loss(logits, labels, torch.tensor([4])).item() == pytest.approx(math.log(2), rel=1e-5)


def test_mil_align_multilabel_hand_built():
    logits = torch.zeros(1, 4, 3)
    logits[0, 0] = torch.tensor([0.0, 2.0, 1.0])              # k = 1 → instance logits = [0, 2, 1]
    labels = torch.tensor([[0.0, 1.0, 1.0]])                  # multi-label → target [0, .5, .5]
    ls = torch.log_softmax(torch.tensor([0.0, 2.0, 1.0]), 0)
    expected = -(0.5 * ls[1] + 0.5 * ls[2]).item()
    assert mil_align_loss(logits, labels, torch.tensor([4])).item() == pytest.approx(expected, rel=1e-5)


def test_contrast_loss_hand_built():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])   # |cos| = 0 and 1 → mean 0.5
    assert contrast_loss(t).item() == pytest.approx(0.5)


def test_total_loss_matches_official_loop_reference(tiny_clip):
    torch.manual_seed(3)
    cfg = tiny_config("xd", visual_length=128, padding="masked")
    model = VadCLIP(cfg, tiny_clip)
    x = torch.randn(3, 128, 32)
    lengths = torch.tensor([128, 70, 16])
    labels = torch.stack([torch.from_numpy(cfg.label_vector(s)) for s in ("A", "B2-B1-0", "G-0-0")])
    out = model(x, lengths)
    total, parts = vadclip_loss(out, labels, lengths, cfg.contrast_weight)
    ref = reference_loss(reference_forward(model, x, lengths), labels, lengths, cfg.contrast_weight)
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    assert set(parts) == {"loss", "loss_mil", "loss_align", "loss_contrast"}

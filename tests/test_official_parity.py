"""``padding="official"`` against an independent re-implementation of the official
VadCLIP code (vadclip.reference.official_*): forward outputs on padded batches, the
loss, every parameter's gradient, and per-snippet scores of the official test
procedure, for both presets (issue #11)."""
import numpy as np
import pytest
import torch

from vadclip import VadCLIP, tiny_config
from vadclip.losses import vadclip_loss
from vadclip.model import score_video
from vadclip.reference import official_forward, official_test_scores, reference_loss

LENGTHS = [1, 5, 37, 200, 256]
LABELS = {"ucf": ["Normal", "Abuse", "Normal", "Vandalism", "Fighting"],
          "xd": ["A", "B2-B1-0", "A", "G-0-0", "B6-0-0"]}


@pytest.fixture(scope="module", params=["ucf", "xd"])
def official_model(request, tiny_clip):
    torch.manual_seed(11)
    cfg = tiny_config(request.param)                 # the presets default to official padding
    assert cfg.padding == "official" and cfg.visual_length == 256
    model = VadCLIP(cfg, tiny_clip)
    with torch.no_grad():   # weights far from init, so padded positions really move the outputs
        for name, p in model.named_parameters():
            if not name.startswith("prompt."):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(LENGTHS), 256, model.embed_dim)
    for i, n in enumerate(LENGTHS):
        x[i, :n] = torch.randn(n, model.embed_dim, generator=g)
    labels = torch.stack([torch.from_numpy(model.cfg.label_vector(s)) for s in LABELS[model.cfg.preset]])
    return x, torch.tensor(LENGTHS), labels


def test_forward_equals_the_official_forward_on_padded_batches(official_model):
    x, lengths, _ = _batch(official_model)
    official_model.eval()
    with torch.no_grad():
        mine, ref = official_model(x, lengths), official_forward(official_model, x, lengths)
    # every position, padded ones included: official mode computes them as the official code
    torch.testing.assert_close(mine.logits_c, ref.logits_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.logits_a, ref.logits_a, atol=1e-5, rtol=1e-5)
    # and the padding really matters in this mode: a short video alone, unpadded, differs
    with torch.no_grad():
        alone = official_model.cfg.replace(padding="masked")
        masked = VadCLIP(alone, official_model.clip)
        masked.load_state_dict(official_model.state_dict())
        diff = (masked(x, lengths).logits_c - mine.logits_c)[1, :5].abs().max()
    assert diff > 1e-3


def test_loss_and_every_gradient_equal_the_official_recipe(official_model):
    x, lengths, labels = _batch(official_model, seed=1)
    official_model.train()
    params = [p for p in official_model.parameters() if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params)

    mine, _ = vadclip_loss(official_model(x, lengths), labels, lengths, official_model.cfg.contrast_weight)
    ref = reference_loss(official_forward(official_model, x, lengths), labels, lengths,
                         official_model.cfg.contrast_weight)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for p, g1, g2 in zip(params, grads(mine), grads(ref)):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [1, 5, 37, 200, 256, 700])
def test_scores_equal_the_official_test_procedure(official_model, t):
    feat = np.random.default_rng(t).normal(size=(t, official_model.embed_dim)).astype(np.float32)
    a_ref, p_ref = official_test_scores(official_model, feat)
    a, p = score_video(official_model, feat)
    np.testing.assert_allclose(a, a_ref, atol=1e-5)
    np.testing.assert_allclose(p, p_ref, atol=1e-5)
    # a video's scores never depend on the other videos of a batch: score_video batches
    # its own chunks only, and each chunk's forward is independent of the others
    a2, _ = score_video(official_model, feat, chunk_batch=1)
    np.testing.assert_allclose(a2, a, atol=1e-6)


def test_old_checkpoints_without_the_option_load_as_masked(official_model):
    d = official_model.cfg.to_dict()
    d.pop("padding")
    assert type(official_model.cfg).from_dict(d).padding == "masked"
    assert tiny_config("custom", classes=["n", "a"]).padding == "masked"

import numpy as np
import pytest
import torch

from vadclip import VadCLIP, tiny_config
from vadclip.model.config import ClipSpec
from vadclip.model.checkpoint import (CheckpointError, load_checkpoint, load_official_checkpoint, official_state_dict,
                                save_checkpoint)
from vadclip.model.network import LGTAdapter, score_video
from vadclip.testing.reference import reference_forward


@pytest.fixture()
def model(tiny_clip):
    torch.manual_seed(0)
    cfg = tiny_config("ucf", visual_length=64, padding="masked")  # the padding-invariant mode
    return VadCLIP(cfg, tiny_clip).eval()


def test_shapes(model):
    x = torch.randn(3, 64, 32)
    out = model(x, torch.tensor([64, 10, 33]))
    assert out.logits_c.shape == (3, 64)
    assert out.logits_a.shape == (3, 64, 14)
    assert out.text_features.shape == (14, 32)
    assert torch.isfinite(out.logits_a).all() and torch.isfinite(out.logits_c).all()


def test_padding_never_changes_real_scores(model):
    torch.manual_seed(1)
    x = torch.randn(3, 64, 32)
    lengths = torch.tensor([64, 21, 7])
    out = model(x, lengths)
    garbage = x.clone()
    garbage[1, 21:] = 100 * torch.randn(43, 32)
    garbage[2, 7:] = -50.0
    out2 = model(garbage, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model(x[i:i + 1, :n], lengths[i:i + 1])
        assert torch.allclose(alone.logits_c[0], out.logits_c[i, :n], atol=1e-5)
        assert torch.allclose(alone.logits_a[0], out.logits_a[i, :n], atol=1e-4)
        assert torch.allclose(out2.logits_c[i, :n], out.logits_c[i, :n], atol=1e-5)
    # padded positions are inert
    assert out.logits_c[1, 21:].abs().max() == 0


def test_vectorised_matches_per_sample_reference(model):
    torch.manual_seed(2)
    x = torch.randn(4, 64, 32)
    lengths = torch.tensor([64, 40, 9, 1])
    out = model(x, lengths)
    ref = reference_forward(model, x, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(out.logits_c[i, :n], ref.logits_c[i, :n], atol=1e-5)
        assert torch.allclose(out.logits_a[i, :n], ref.logits_a[i, :n], atol=1e-4)


def test_vectorised_gradients_match_reference(model):
    from vadclip.model.losses import vadclip_loss
    from vadclip.testing.reference import reference_loss

    torch.manual_seed(3)
    x = torch.randn(4, 64, 32)
    lengths = torch.tensor([64, 37, 8, 3])
    labels = torch.zeros(4, model.cfg.num_classes)
    labels[:2, 0] = 1
    labels[2:, 5] = 1
    grads = []
    for run in ("vec", "ref"):
        model.zero_grad(set_to_none=True)
        if run == "vec":
            loss = vadclip_loss(model(x, lengths), labels, lengths, 0.1)[0]
        else:
            loss = reference_loss(reference_forward(model, x, lengths), labels, lengths, 0.1)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4), k
    model.zero_grad(set_to_none=True)


def test_text_encoder_cut_after_eot_is_exact(model):
    # CLIP's text mask is causal, so positions after the last EOT cannot change the
    # EOT features: the truncated run equals the full 77-token run
    emb, eot = model.prompt(), model.prompt.eot_index
    assert model.clip.text_is_causal
    full = model.clip.encode_text_embeddings(emb, eot, truncate=False)
    cut = model.clip.encode_text_embeddings(emb, eot, truncate=True)
    assert int(eot.max()) + 1 < model.clip.context_length
    assert torch.allclose(full, cut, atol=1e-5)


def test_packed_window_attention_equals_block_masked_attention(model):
    # the official form: full-sequence MHA with a block-diagonal -inf mask; ours runs
    # the same weights on packed windows (the last one partial, padded keys masked)
    a = model.adapter
    w = a.window
    t = 2 * w + 5
    x = torch.randn(1, t, 32)
    pos = torch.arange(t)
    mask = torch.where((pos[:, None] // w) == (pos[None, :] // w), 0.0, float("-inf"))
    ref = x
    for blk in a.temporal.resblocks:
        y = blk.ln_1(ref)
        ref = ref + blk.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        ref = ref + blk.mlp(blk.ln_2(ref))
    xw = torch.nn.functional.pad(x, (0, 0, 0, 3 * w - t)).view(3, w, 32)
    ok = (torch.arange(3 * w) < t).view(3, w)
    out = a.temporal(xw, ok).reshape(1, 3 * w, 32)[:, :t]
    assert torch.allclose(out, ref, atol=1e-5)
    # and a change inside window 0 leaves windows 1 and 2 untouched
    x2 = xw.clone()
    x2[0, 3] += 5
    out2 = a.temporal(x2, ok)
    assert torch.equal(out2[1:], a.temporal(xw, ok)[1:])
    assert not torch.allclose(out2[0], a.temporal(xw, ok)[0])


def test_frozen_clip_gets_no_grad_but_prompts_do(model):
    x = torch.randn(2, 64, 32)
    out = model(x, torch.tensor([64, 32]))
    (out.logits_a.sum() + out.logits_c.sum()).backward()
    assert model.prompt.text_prompt_embeddings.weight.grad is not None
    assert all(p.grad is None for p in model.clip.parameters())
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert not any(k.startswith("clip") for k in model.state_dict())


def test_wrong_feature_dim_is_clear_error(model):
    with pytest.raises(ValueError, match="dim 48.*expects 32"):
        model(torch.randn(1, 10, 48))


def test_too_long_sequence_is_clear_error(model):
    with pytest.raises(ValueError, match="exceeds visual_length"):
        model(torch.randn(1, 65, 32))


def test_score_video_chunks_long_videos(model):
    feats = np.random.default_rng(0).normal(size=(150, 32)).astype(np.float32)
    anomaly, probs = score_video(model, feats)
    assert anomaly.shape == (150,) and probs.shape == (150, 14)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    # the second chunk scores as if it were a video of its own
    a2, _ = score_video(model, feats[64:128])
    np.testing.assert_allclose(anomaly[64:128], a2, atol=1e-5)


def test_checkpoint_roundtrip_and_frozen_text(model, tmp_path):
    x = torch.randn(2, 64, 32)
    ln = torch.tensor([64, 12])
    ref = model(x, ln)
    model.freeze_text()
    save_checkpoint(model, str(tmp_path / "m.pt"))
    light = load_checkpoint(str(tmp_path / "m.pt"))          # no CLIP needed
    assert light.clip is None
    out = light(x, ln)
    assert torch.allclose(out.logits_a, ref.logits_a, atol=1e-5)
    assert torch.allclose(out.logits_c, ref.logits_c, atol=1e-6)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(str(bad))


def test_official_checkpoint_loads(model, tiny_clip):
    """An official-format state dict (``clipmodel.*`` + un-prefixed adapter keys) maps
    onto this model and reproduces its outputs."""
    official = official_state_dict(model)
    assert "clipmodel.token_embedding.weight" in official and "temporal.resblocks.1.attn.in_proj_weight" in official
    # the tiny test CLIP uses GELU; official (OpenAI) weights default to QuickGELU
    c = model.cfg.clip
    cfg = model.cfg.replace(clip=ClipSpec(c.model, c.pretrained, {**c.kwargs, "force_quick_gelu": False}))
    loaded = load_official_checkpoint({"model_state_dict": official}, cfg)
    x = torch.randn(2, 64, 32)
    ln = torch.tensor([64, 30])
    a, b = model(x, ln), loaded(x, ln)
    assert torch.allclose(a.logits_c, b.logits_c, atol=1e-5)
    assert torch.allclose(a.logits_a, b.logits_a, atol=1e-4)
    official["bogus.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="bogus"):
        load_official_checkpoint(official, cfg)


def test_adapter_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        LGTAdapter(33, 16, 1, 1, 8)

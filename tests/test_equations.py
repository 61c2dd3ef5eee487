"""Every equation function on cases small enough to compute by hand, plus invariants."""

import math

import pytest
import torch

from factory.method import equations as eq
from factory.method import losses


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def sig(x):
    return 1 / (1 + math.exp(-x))


class TestMinMax:
    def test_hand_case(self):
        assert torch.allclose(
            eq.minmax_normalize(t([[1.0, 3.0], [2.0, 5.0]])), t([[0, 0.5], [0.25, 1]])
        )

    @pytest.mark.parametrize("value", [0.0, 0.7, -3.0])
    def test_constant_map_is_zero_not_nan(self, value):
        out = eq.minmax_normalize(torch.full((2, 3, 3), value))
        assert torch.equal(out, torch.zeros(2, 3, 3))

    def test_batched_maps_normalised_independently(self):
        x = torch.stack([t([[0, 10], [5, 10]]), t([[1, 2], [3, 4]])])
        out = eq.minmax_normalize(x)
        assert torch.allclose(out[0], t([[0, 1], [0.5, 1]]))
        assert torch.allclose(out[1], t([[0, 1 / 3], [2 / 3, 1]]))


class TestCAM:
    def test_eq1_relu_then_normalise(self):
        maps = torch.zeros(1, 2, 2, 2)
        maps[0, 1] = t([[-1.0, 2.0], [1.0, 4.0]])
        cam = eq.class_activation_map(maps, torch.tensor([1]))
        # ReLU -> [[0, 2], [1, 4]] -> Z -> [[0, .5], [.25, 1]]
        assert torch.allclose(cam[0], t([[0, 0.5], [0.25, 1]]))

    def test_all_negative_class_map_gives_zero_cam(self):
        maps = -torch.rand(2, 3, 4, 4)
        assert torch.equal(
            eq.class_activation_map(maps, torch.tensor([0, 2])), torch.zeros(2, 4, 4)
        )


class TestSoftFilter:
    def test_eq3_keeps_tag_only_when_ranked_first(self):
        conf = t([[0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
        assert torch.allclose(eq.soft_filter(conf, torch.tensor([1, 0])), t([0.7, 0.0]))

    def test_multiple_sources(self):
        conf = t([[[0.9, 0.1], [0.3, 0.6]]])  # one sample, two sources
        assert torch.allclose(eq.soft_filter(conf, torch.tensor([[0, 0]])), t([[0.9, 0.0]]))


class TestSCAM:
    def test_filtered_source_drops_out(self):
        """2x2 SCAM where Eq. 3 filters one source out equals the other's normalised map."""
        phi_a = t([[0.0, 0.2], [0.6, 1.0]])
        phi_b = t([[1.0, 0.0], [0.0, 0.0]])
        cams = torch.stack([phi_a, phi_b])[None]
        conf = t([[[0.1, 0.8], [0.9, 0.3]]])  # source B ranks class 0 first; tag is 1
        out = eq.scam(cams, conf, torch.tensor([1]))
        assert torch.allclose(out[0], eq.minmax_normalize(phi_a), atol=1e-6)

    def test_confidence_weighted_mean(self):
        phi_a = t([[0.0, 1.0]])
        phi_b = t([[1.0, 0.0]])
        cams = torch.stack([phi_a, phi_b])[None]
        w = t([[0.6, 0.2]])
        out = eq.selective_fusion(cams, w, lam=0.0)
        # per pixel: [0.2/0.8, 0.6/0.8] = [0.25, 0.75] -> Z -> [0, 1]
        assert torch.allclose(out[0], t([[0.0, 1.0]]))
        raw = ((w[..., None, None] * cams).sum(1) + 1e-4) / (w.sum(1)[:, None, None] + 1e-4)
        assert torch.allclose(raw[0], t([[0.2 + 1e-4, 0.6 + 1e-4]]) / (0.8 + 1e-4))

    def test_all_sources_filtered_gives_zeros(self):
        cams = torch.rand(2, 3, 4, 4)
        out = eq.selective_fusion(cams, torch.zeros(2, 3))
        assert torch.equal(out, torch.zeros(2, 4, 4))

    def test_scam_plus_over_eleven_sources(self):
        torch.manual_seed(0)
        cams = torch.rand(2, 11, 5, 5)
        conf = torch.rand(2, 11, 4)
        out = eq.scam_plus(cams, conf, torch.tensor([0, 3]))
        assert (
            out.shape == (2, 5, 5) and out.min() >= 0 and out.max() <= 1 and not out.isnan().any()
        )

    def test_scam_plus_upsampling_once_equals_upsampling_each_source(self):
        # the labeler's form (the + CAMs fused at their own 8x8 grid, one upsample) is
        # Eq. 8 over the 11 full-size CAMs, because bilinear upsampling is linear
        torch.manual_seed(2)
        fine, low = torch.rand(3, 3, 24, 40), torch.rand(3, 8, 8, 8)
        conf = torch.rand(3, 11, 4)
        conf[0, :, 1] = 2.0  # frame 0: no source ranks its tag (0) first: all zeros
        up = torch.nn.functional.interpolate(
            low, size=(24, 40), mode="bilinear", align_corners=False
        )
        idx = torch.tensor([0, 3, 2])
        expected = eq.scam_plus(torch.cat([fine, up], 1), conf, idx)
        got = eq.scam_plus(fine, conf, idx, low_res=low)
        assert torch.allclose(got, expected, atol=1e-5) and got[0].abs().max() == 0

    def test_average_cam_eq22(self):
        cams = torch.stack([t([[0.0, 0.3]]), t([[0.6, 0.3]]), t([[0.3, 0.3]])])[None]
        assert torch.allclose(eq.average_cam(cams)[0], t([[0.3, 0.3]]))


class TestCoarseBox:
    def test_bright_block(self):
        m = torch.zeros(1, 8, 8)
        m[0, 2:4, 4:7] = 1.0  # mean 6/64, threshold 2x mean -> the block
        boxes, fell_back = eq.coarse_box(m)
        assert torch.allclose(boxes[0], t([4 / 8, 2 / 8, 7 / 8, 4 / 8]))
        assert not fell_back[0]

    @pytest.mark.parametrize("fill", [0.0, 0.5])
    def test_empty_or_constant_falls_back_to_full_frame(self, fill):
        boxes, fell_back = eq.coarse_box(torch.full((2, 6, 6), fill))
        assert torch.equal(boxes, t([[0, 0, 1, 1], [0, 0, 1, 1]]))
        assert fell_back.all()

    def test_degenerate_speck_falls_back(self):
        m = torch.zeros(1, 64, 64)
        m[0, 10, 10] = 1.0  # a 1-pixel box is narrower than 5% of the frame
        boxes, fell_back = eq.coarse_box(m)
        assert fell_back[0] and torch.equal(boxes[0], t([0, 0, 1, 1]))


class TestCropPaste:
    def test_crop_resize_exact_on_pixel_grid(self):
        img = torch.arange(16.0).reshape(1, 1, 4, 4)
        out = eq.crop_resize(img, t([[0.5, 0.5, 1.0, 1.0]]), (2, 2))
        assert torch.allclose(out[0, 0], t([[10, 11], [14, 15]]))

    def test_paste_back_bottom_right_quadrant(self):
        cam = t([[[0.1, 0.2], [0.3, 0.4]]])
        out = eq.paste_back(cam, t([[0.5, 0.5, 1.0, 1.0]]), (4, 4))
        expected = torch.zeros(4, 4)
        expected[2:, 2:] = cam[0]
        assert torch.allclose(out[0], expected, atol=1e-6)

    def test_crop_then_paste_roundtrip_inside_box(self):
        torch.manual_seed(0)
        img = torch.rand(1, 1, 16, 16)
        box = t([[0.25, 0.5, 0.75, 1.0]])
        crop = eq.crop_resize(img, box, (8, 8))
        back = eq.paste_back(crop[:, 0], box, (16, 16))
        assert torch.allclose(back[0, 8:, 4:12], img[0, 0, 8:, 4:12], atol=1e-5)
        assert back[0, :8].abs().max() == 0 and back[0, :, :4].abs().max() == 0


class TestRefineLayer:
    def test_eq13_14_by_hand(self):
        h = t([[[1.0, 0.5], [0.2, 0.9]]])  # c = 1, so cm = h
        td, tr = 0.8, 0.6
        out = eq.fixation_refine(h, td, tr)
        # mask = 1 where cm < 0.8 * max(cm) = 0.8: pixels 0.5 and 0.2
        expected = []
        for v in (1.0, 0.5, 0.2, 0.9):
            factor = tr * sig(v) if v < 0.8 else sig(v)
            expected.append((v * factor + v) / 2)
        assert torch.allclose(out.flatten(), t(expected))

    def test_channel_mean_drives_mask(self):
        h = torch.zeros(2, 1, 1)  # two channels, one pixel
        h[:, 0, 0] = t([2.0, 0.0])  # cm = 1 = max: not masked
        out = eq.fixation_refine(h, 0.8, 0.1)
        assert torch.allclose(out[:, 0, 0], (h[:, 0, 0] * sig(1.0) + h[:, 0, 0]) / 2)

    def test_tr_one_td_any_equals_plain_sigmoid_gate(self):
        h = torch.rand(3, 4, 5, 5)
        sig_cm = torch.sigmoid(h.mean(-3, keepdim=True))
        assert torch.allclose(eq.fixation_refine(h, 0.8, 1.0), (h * sig_cm + h) / 2)


class TestFinalFusion:
    def test_eq21_by_hand(self):
        sta, short, long_ = t([[0.0, 1.0]]), t([[0.0, 1.0]]), t([[1.0, 0.0]])
        # product of Z-maps = [0, 0] (constant -> 0); Z(sum=[1, 2]) = [0, 1]
        assert torch.allclose(eq.final_fusion(sta, short, long_), t([[0.0, 0.5]]))
        same = t([[0.0, 1.0]])
        assert torch.allclose(eq.final_fusion(same, same, same), t([[0.0, 1.0]]))

    def test_eq23_product_of_halves(self):
        same = t([[0.0, 1.0]])
        assert torch.allclose(eq.aggregated_fusion(same, same, same), t([[0.0, 0.25]]))

    def test_max_fusion(self):
        assert torch.allclose(
            eq.max_fusion(t([[0.0, 2.0, 1.0]]), t([[1.0, 0.0, 0.0]]), t([[0.0, 0.0, 0.0]])),
            t([[1.0, 1.0, 0.5]]),
        )

    @pytest.mark.parametrize("fusion", list(eq.FUSIONS.values()))
    def test_in_unit_range_and_finite_on_constant_inputs(self, fusion):
        z = torch.zeros(2, 4, 4)
        r = torch.rand(2, 4, 4)
        for a, b, c in ((z, z, z), (r, z, r), (r, r, r)):
            out = fusion(a, b, c)
            assert not out.isnan().any() and out.min() >= 0 and out.max() <= 1


class TestLosses:
    def test_eq7_hand_value(self):
        # one class, logit 0, positive: -log(sigmoid(0)) = log 2
        assert math.isclose(
            losses.multilabel_soft_margin(t([[0.0]]), t([[1.0]])).item(), math.log(2), rel_tol=1e-6
        )

    def test_eq7_matches_torch(self):
        torch.manual_seed(0)
        x, y = torch.randn(4, 7), (torch.rand(4, 7) > 0.5).float()
        ref = torch.nn.functional.multilabel_soft_margin_loss(x, y)
        assert torch.allclose(losses.multilabel_soft_margin(x, y), ref, atol=1e-6)

    def test_eq17_hand_value(self):
        # target 0.5 everywhere, logits 0: BCE = log 2, KL between equal maps = 0
        out = losses.bce_kl(torch.zeros(1, 3, 3), torch.full((1, 3, 3), 0.5))
        assert math.isclose(out.item(), math.log(2), rel_tol=1e-5)

    def test_eq17_kl_positive_for_different_maps(self):
        target = torch.zeros(1, 4, 4)
        target[0, 0, 0] = 1
        far = torch.full((1, 4, 4), -5.0)
        far[0, 3, 3] = 5.0
        near = torch.full((1, 4, 4), -5.0)
        near[0, 0, 0] = 5.0
        assert losses.saliency_kl(torch.sigmoid(far), target) > losses.saliency_kl(
            torch.sigmoid(near), target
        )

    def test_eq20_is_sum_over_nodes(self):
        torch.manual_seed(0)
        preds = [torch.randn(2, 5, 5) for _ in range(3)]
        targets = [torch.rand(2, 5, 5) for _ in range(3)]
        total = losses.node_sum_loss(preds, targets)
        assert torch.allclose(
            total, sum(losses.bce_kl(p, q) for p, q in zip(preds, targets, strict=True))
        )
        with pytest.raises(ValueError, match="one target per node"):
            losses.node_sum_loss(preds, targets[:2])


def test_softmax_confidences_rank_like_sigmoid_and_sum_to_one():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 3.5]])
    sm = eq.class_confidences(logits, "softmax")
    assert torch.allclose(sm.sum(-1), torch.ones(2))
    assert torch.equal(sm.argmax(-1), eq.class_confidences(logits).argmax(-1))
    e = torch.exp(torch.tensor([2.0, 0.0, -1.0]))
    assert torch.allclose(sm[0], e / e.sum())
    with pytest.raises(ValueError, match="confidences 'tanh'"):
        eq.class_confidences(logits, "tanh")


def test_no_source_rule_flat_gives_zeros_average_gives_the_mean():
    # two sources, 1 x 2 maps; confidences for 2 classes, tag 0; neither ranks it first
    cams = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.5]]]])
    conf = torch.tensor([[[0.2, 0.8], [0.1, 0.6]]])
    idx = torch.tensor([0])
    assert torch.equal(eq.scam(cams, conf, idx), torch.zeros(1, 1, 2))
    # average: Z(([1, 0] + [0, 0.5]) / 2) = Z([0.5, 0.25]) = [1, 0]
    assert torch.allclose(
        eq.scam(cams, conf, idx, no_source="average"), torch.tensor([[[1.0, 0.0]]])
    )
    # a frame where a source passes is the same under both rules
    conf_ok = torch.tensor([[[0.9, 0.1], [0.1, 0.6]]])
    assert torch.equal(
        eq.scam(cams, conf_ok, idx), eq.scam(cams, conf_ok, idx, no_source="average")
    )
    # Eq. 8 with low-resolution + maps follows the same rule
    low = torch.tensor([[[[0.0, 1.0]]]])
    conf3 = torch.cat([conf, torch.tensor([[[0.3, 0.7]]])], dim=1)
    out = eq.scam_plus(cams, conf3, idx, low_res=low, no_source="average")
    # mean of [1, 0], [0, 0.5], [0, 1] = [1/3, 1/2] -> Z = [0, 1]
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0]]]), atol=1e-5)
    with pytest.raises(ValueError, match="no-source rule"):
        eq.no_source_fallback(torch.zeros(1, 2), "skip")


def test_balanced_binary_loss_by_hand():
    from factory.method.losses import balanced_binary_loss

    logits = torch.tensor([[2.0], [2.0], [2.0], [-1.0]])
    labels = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    pos, neg = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert abs(balanced_binary_loss(logits, labels).item() - (pos + neg) / 2) < 1e-6
    assert abs(losses.multilabel_soft_margin(logits, labels).item() - (3 * pos + neg) / 4) < 1e-6
    only = balanced_binary_loss(logits[:3], labels[:3]).item()
    assert abs(only - pos) < 1e-6  # one class in the batch: its plain mean

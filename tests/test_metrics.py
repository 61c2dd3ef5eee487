"""Metrics in three layers: hand-computed tiny cases, analytic invariants, and pinned
regression values on a seeded synthetic case."""

import math

import numpy as np
import pytest

from factory.method import metrics as m


def a(x):
    return np.array(x, dtype=np.float64)


def fixmap(shape, *idx):
    f = np.zeros(shape, dtype=bool)
    for i in idx:
        f.flat[i] = True
    return f


class TestHandComputed:
    def test_auc_judd_perfect_ranking(self):
        pred = a([[0.1, 0.4, 0.35, 0.8]])
        assert m.auc_judd(pred, fixmap((1, 4), 1, 3)) == pytest.approx(1.0)

    def test_auc_judd_two_thirds(self):
        # fixation at 0.35: 3 pixels >= it (0.35, 0.4, 0.8) -> point (fp=2/3, tp=1)
        # area = 1/2 * 2/3 + 1/3 = 2/3
        pred = a([[0.1, 0.4, 0.35, 0.8]])
        assert m.auc_judd(pred, fixmap((1, 4), 2)) == pytest.approx(2 / 3, abs=1e-6)

    def test_nss(self):
        # mean 1, std (ddof=1) sqrt(12/3) = 2 -> (4 - 1) / 2
        assert m.nss(a([[0, 0, 0, 4]]), fixmap((1, 4), 3)) == pytest.approx(1.5)

    def test_cc_linear_and_anti(self):
        gt = a([[0.0, 1.0], [2.0, 5.0]])
        assert m.cc(3 * gt + 1, gt) == pytest.approx(1.0)
        assert m.cc(-gt, gt) == pytest.approx(-1.0)

    def test_sim(self):
        # pred -> [1, 0]; a constant ground truth is uniform [.5, .5]; sum of minima .5
        assert m.sim(a([[1.0, 0.0]]), a([[1.0, 1.0]])) == pytest.approx(0.5)
        assert m.sim(a([[1.0, 0.0]]), a([[0.0, 1.0]])) == pytest.approx(0.0)

    def test_kld(self):
        # q = [1, 0], p = [.5, .5]: 1 * log(1 / .5) = log 2
        assert m.kld(a([[1.0, 1.0]]), a([[1.0, 0.0]])) == pytest.approx(math.log(2), rel=1e-9)

    def test_auc_shuffled_separates_from_other_frames(self):
        pred = a([[0.0, 1.0]])
        assert m.auc_shuffled(pred, fixmap((1, 2), 1), fixmap((1, 2), 0)) == pytest.approx(1.0)
        # negatives at the very same place as the fixations: chance
        assert m.auc_shuffled(pred, fixmap((1, 2), 1), fixmap((1, 2), 1)) == pytest.approx(0.5)

    def test_stavis_kernel_matches_fspecial(self):
        k = m.gaussian_kernel(13, 2.0)
        assert k.sum() == pytest.approx(1.0) and k[6] == k.max()
        assert k[6] / k[4] == pytest.approx(math.exp(4 / 8))


class TestInvariants:
    @pytest.fixture
    def case(self):
        rng = np.random.default_rng(0)
        gt = rng.random((12, 16))
        fix = rng.random((12, 16)) > 0.9
        other = rng.random((12, 16)) > 0.8
        return gt, fix, other

    @pytest.mark.parametrize("value", [0.0, 0.3, 7.0])
    def test_constant_prediction(self, case, value):
        gt, fix, other = case
        pred = np.full((12, 16), value)
        assert m.auc_judd(pred, fix) == 0.5
        assert m.auc_shuffled(pred, fix, other) == pytest.approx(0.5)
        assert m.nss(pred, fix) == 0.0
        assert m.cc(pred, gt) == 0.0
        assert math.isfinite(m.sim(pred, gt)) and math.isfinite(m.kld(pred, gt))

    def test_no_fixations_is_none_not_zero(self, case):
        gt, _, other = case
        empty = np.zeros((12, 16), dtype=bool)
        pred = np.random.default_rng(1).random((12, 16))
        assert m.auc_judd(pred, empty) is None
        assert m.nss(pred, empty) is None
        assert m.auc_shuffled(pred, empty, other) is None

    def test_ranges_and_symmetry(self, case):
        gt, fix, other = case
        pred = np.random.default_rng(2).random((12, 16))
        assert 0 <= m.auc_judd(pred, fix) <= 1
        assert 0 <= m.sim(pred, gt) <= 1 + 1e-12
        assert -1 <= m.cc(pred, gt) <= 1
        assert m.cc(pred, gt) == pytest.approx(m.cc(gt, pred))
        assert m.kld(gt, gt) == pytest.approx(0.0, abs=1e-9)
        assert m.sim(gt, gt) == pytest.approx(1.0)

    def test_auc_judd_close_to_exact_roc_auc(self, case):
        # Judd's curve interpolates linearly between the fixations' thresholds, so it is
        # the exact ROC AUC (Mann-Whitney) up to about one fixation's share.
        _, fix, _ = case
        pred = np.random.default_rng(3).random((12, 16))
        pos, neg = pred[fix], pred[~fix]
        exact = (pos[:, None] > neg[None, :]).mean()
        assert abs(m.auc_judd(pred, fix) - exact) <= 1.0 / fix.sum()
        assert m.auc_judd(fix.astype(float), fix) == pytest.approx(1.0, abs=1e-6)

    def test_scale_invariance(self, case):
        gt, fix, other = case
        pred = np.random.default_rng(4).random((12, 16))
        for f in (
            lambda p: m.auc_judd(p, fix),
            lambda p: m.nss(p, fix),
            lambda p: m.cc(p, gt),
            lambda p: m.sim(p, gt),
        ):
            assert f(pred) == pytest.approx(f(5 * pred + 2), abs=1e-6)

    def test_prediction_resized_to_ground_truth(self, case):
        gt, fix, _ = case
        small = np.random.default_rng(5).random((6, 8))
        assert m.resize_to(small.astype(np.float32), (12, 16)).shape == (12, 16)
        assert m.cc(small, gt) == pytest.approx(
            m.cc(m.resize_to(small.astype(np.float32), (12, 16)), gt)
        )

    def test_deterministic_given_seed(self, case):
        gt, fix, other = case
        pred = np.random.default_rng(6).random((12, 16))
        assert m.auc_shuffled(pred, fix, other, seed=3) == m.auc_shuffled(pred, fix, other, seed=3)
        assert m.auc_judd(pred, fix, seed=3) == m.auc_judd(pred, fix, seed=3)


class TestAggregate:
    def test_per_frame_then_video_then_dataset_and_skips_counted(self):
        scores = {
            "v1": [{"cc": 0.2, "nss": 1.0}, {"cc": 0.4, "nss": None}],
            "v2": [{"cc": 0.9, "nss": 3.0}],
        }
        out = m.aggregate(scores)
        assert out["videos"]["v1"] == {"cc": pytest.approx(0.3), "nss": 1.0}
        assert out["dataset"]["cc"] == pytest.approx((0.3 + 0.9) / 2)  # not (0.2+0.4+0.9)/3
        assert out["dataset"]["nss"] == pytest.approx(2.0)
        assert out["skipped_frames"] == {"nss": 1}

    def test_center_prior_peaks_at_center(self):
        cp = m.center_prior((9, 11))
        assert np.unravel_index(cp.argmax(), cp.shape) == (4, 5)


class TestPinnedRegression:
    """Values computed once from this implementation on a seeded case; they guard
    against unnoticed changes of the metrics' semantics."""

    @pytest.fixture
    def case(self):
        rng = np.random.default_rng(7)
        h, w = 48, 64
        yy, xx = np.mgrid[0:h, 0:w]
        gt = np.exp(-((yy - 20) ** 2 + (xx - 40) ** 2) / (2 * 6**2))
        fix = np.zeros((h, w), bool)
        pts = rng.normal([20, 40], 4, (15, 2)).round().astype(int)
        fix[pts[:, 0].clip(0, h - 1), pts[:, 1].clip(0, w - 1)] = True
        other = np.zeros((h, w), bool)
        pts2 = rng.normal([24, 32], 8, (40, 2)).round().astype(int)
        other[pts2[:, 0].clip(0, h - 1), pts2[:, 1].clip(0, w - 1)] = True
        pred = np.exp(-((yy - 22) ** 2 + (xx - 36) ** 2) / (2 * 9**2)) + 0.1 * rng.random((h, w))
        return pred, gt, fix, other

    def test_pinned(self, case):
        pred, gt, fix, other = case
        got = m.score_frame(pred, gt, fix, other)
        expected = {
            "auc_judd": 0.9573001853669175,
            "sim": 0.5692379075463352,
            "auc_shuffled": 0.7083777777777778,
            "cc": 0.8222780502082918,
            "nss": 2.525707539859455,
            "kld": 0.5401397075177385,
        }
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-9), name

    def test_pinned_stavis_protocol_on_a_smaller_prediction(self, case):
        pred, gt, fix, other = case
        small = m.resize_to(pred.astype(np.float32), (24, 32))
        got = m.score_frame(m.stavis_preprocess(small, gt.shape), gt, fix, other)
        assert got["cc"] == pytest.approx(0.8067418271039122, rel=1e-6)
        assert got["nss"] == pytest.approx(2.404608295131319, rel=1e-6)

"""The authors' post-processing option (SPEC.md appendix), on cases computed by hand."""

import pytest
import torch

from factory.method.postprocess import (
    POSTPROCESS,
    authors_postprocess,
    suppress_below_mean,
    temporal_smooth,
)


def frames(*values: float) -> torch.Tensor:
    """A clip of 1x1 maps with the given values, one per frame."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None]


def test_temporal_smooth_centred_five_frames_truncated_at_the_ends():
    # frame values 0, 10, 20, 30, 40, 50, 60
    out = temporal_smooth(frames(0, 10, 20, 30, 40, 50, 60))[:, 0, 0]
    # t=0: mean(0, 10, 20) = 10; t=1: mean(0..30) = 15; t=3: mean(10..50) = 30;
    # t=6: mean(40, 50, 60) = 50
    assert out.tolist() == pytest.approx([10, 15, 20, 30, 40, 45, 50])


def test_temporal_smooth_of_a_single_frame_is_the_frame():
    x = torch.rand(1, 4, 5)
    assert torch.equal(temporal_smooth(x), x)


def test_temporal_smooth_rejects_an_even_window():
    with pytest.raises(ValueError, match="odd"):
        temporal_smooth(frames(1, 2), frames=4)


def test_suppress_below_three_times_the_mean():
    # a 2x4 map: mean = (8 + 1*7) / 8 = 1.875, 3 x mean = 5.625: only the 8 survives
    m = torch.tensor([[[8.0, 1, 1, 1], [1, 1, 1, 1]]])
    out = suppress_below_mean(m)
    assert out.tolist() == [[[8.0, 0, 0, 0], [0, 0, 0, 0]]]
    # a value exactly at 3 x mean is kept: [3, 0, 0] has mean 1, threshold 3
    assert suppress_below_mean(torch.tensor([[[3.0, 0, 0]]])).tolist() == [[[3.0, 0, 0]]]
    # [6, 3, 0, 0, 0, 0]: mean 1.5, threshold 4.5: the 3 goes, the 6 stays
    m2 = torch.tensor([[[6.0, 3.0, 0, 0, 0, 0]]])
    assert suppress_below_mean(m2).tolist() == [[[6.0, 0, 0, 0, 0, 0]]]


def test_a_flat_map_becomes_all_zeros():
    m = torch.full((3, 2, 2), 0.5)
    assert torch.count_nonzero(authors_postprocess(m)) == 0


def test_authors_postprocess_smooths_suppresses_and_renormalises():
    # two frames of 1x4 maps; smoothing over the clip averages them (both see each other)
    a = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[0.6, 0.2, 0.0, 0.0]]])
    # smoothed: [0.8, 0.1, 0, 0] for both; mean 0.225, 3 x mean = 0.675: keep 0.8 only;
    # Z -> [1, 0, 0, 0]
    out = authors_postprocess(a)
    assert out.tolist() == [[[1.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]]


def test_registry_names():
    x = torch.rand(2, 3, 3)
    assert torch.equal(POSTPROCESS["none"](x), x)
    assert set(POSTPROCESS) == {"none", "authors"}

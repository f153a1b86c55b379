"""rlvr.tensors: padding token rows into a batch, masked means."""

import pytest
import torch

from rlvr.tensors import masked_mean, pad_sequences


def test_pad_left_puts_rows_at_the_end():
    ids, mask = pad_sequences([[1, 2, 3], [4], []], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_right_puts_rows_at_the_start_and_is_the_default_side_left():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_sequences([[1, 2], [3]], pad_id=9)[0].tolist() == [[1, 2], [9, 3]]


def test_pad_explicit_width():
    ids, mask = pad_sequences([[], [5]], pad_id=7, side="right", width=3)
    assert ids.tolist() == [[7, 7, 7], [5, 7, 7]]
    assert mask.tolist() == [[0, 0, 0], [1, 0, 0]]
    ids, mask = pad_sequences([[5, 6]], pad_id=7, side="left", width=4)
    assert ids.tolist() == [[7, 7, 5, 6]] and mask.tolist() == [[0, 0, 1, 1]]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        pad_sequences([[1, 2, 3]], pad_id=0, width=2)


def test_pad_bad_side_is_an_error():
    with pytest.raises(ValueError, match=r"left \| right, got 'middle'"):
        pad_sequences([[1]], pad_id=0, side="middle")


def test_masked_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 6) / 3)
    assert masked_mean(values, mask.bool()).item() == pytest.approx(3.0)
    assert masked_mean(values, mask, dim=-1).tolist() == pytest.approx([1.5, 6.0])
    assert masked_mean(values, mask, dim=0).tolist() == pytest.approx([1.0, 2.0, 6.0])


def test_masked_mean_empty_mask_is_zero():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert masked_mean(values, torch.zeros(2, 2)).item() == 0.0
    assert masked_mean(values, torch.tensor([[0, 0], [1, 0]]), dim=1).tolist() == [0.0, 3.0]


def test_masked_mean_matches_the_written_out_formula_bit_for_bit():
    torch.manual_seed(0)
    values = torch.randn(4, 7, dtype=torch.float32)
    mask = (torch.rand(4, 7) > 0.4).long()
    maskf = mask.to(values.dtype)
    assert torch.equal(masked_mean(values, mask), (values * maskf).sum() / maskf.sum().clamp(min=1))
    assert torch.equal(masked_mean(values, mask, dim=-1), (values * maskf).sum(-1) / maskf.sum(-1).clamp(min=1))

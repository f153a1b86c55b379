"""Roll-out batch assembly and every masking rule: prompt, padding, EOS, guidance, truncation."""

import pytest
import torch

from rlvr.batch import build_rollout_batch, completion_loss_mask
from rlvr.data.arithmetic import make_example
from tests.helpers import TOKENIZER, encode, make_batch


def test_padding_eos_and_prompt_masks():
    batch = make_batch([["1#1", "12+34=46#46"]])
    # completions right-padded, EOS kept as a scored token (the policy must learn to stop)
    assert batch.token_mask.sum(-1).tolist() == [4, 12]
    assert batch.completion_ids[0, 3].item() == TOKENIZER.eos_token_id
    assert batch.completion_ids[0, 4:].eq(TOKENIZER.pad_token_id).all()
    assert torch.equal(batch.loss_mask, batch.token_mask)
    # prompts left-padded, equal here; the full sequence mask is prompt mask + token mask
    assert batch.prompt_mask.sum(-1).tolist() == [len("12+34+5=")] * 2
    assert torch.equal(batch.attention_mask, torch.cat([batch.prompt_mask, batch.token_mask], 1))
    assert batch.completion_texts == ["1#1", "12+34=46#46"]


def test_truncated_completion_keep_or_mask():
    kept = make_batch([["12+34=46;46+5=51#51", "12+34"]], finished=[[True, False]])
    assert kept.truncated.tolist() == [False, True]
    assert kept.loss_mask[1].sum() == 5
    masked = make_batch([["12+34=46;46+5=51#51", "12+34"]], finished=[[True, False]], mask_truncated=True)
    assert masked.loss_mask[1].sum() == 0 and masked.loss_mask[0].sum() == 20


def test_guided_completion_starts_with_prefix_and_mask_follows_loss_on_guidance():
    prefix = "12+34=46;"
    for loss_on_guidance in (True, False):
        batch = make_batch([["46+5=51#51", "12+34=46;46+5=51#51"]], prefixes=[[prefix, ""]], loss_on_guidance=loss_on_guidance)
        assert batch.completion_ids[0, : len(prefix)].tolist() == encode(prefix)
        assert batch.completion_texts[0] == prefix + "46+5=51#51"
        assert batch.guided.tolist() == [True, False]
        assert batch.guidance_tokens.tolist() == [len(prefix), 0]
        expected_guided = 20 if loss_on_guidance else 20 - len(prefix)
        assert batch.loss_mask[0].sum().item() == expected_guided
        assert batch.loss_mask[0, : len(prefix)].sum().item() == (len(prefix) if loss_on_guidance else 0)
        # the unguided roll-out is untouched
        assert batch.loss_mask[1].sum().item() == 20


def test_guided_roll_out_keeps_its_own_generation_budget():
    # the continuation may use max_new_tokens of its own; the prefix comes on top (the authors' rule)
    batch = make_batch([["46+5=51#51"]], prefixes=[["12+34=46;"]], max_new_tokens=11)
    assert batch.completion_ids.shape[1] == len("12+34=46;") + 11
    assert batch.truncated.tolist() == [False]
    assert batch.completion_texts[0] == "12+34=46;46+5=51#51"


def test_engine_returning_more_than_the_budget_is_an_error():
    with pytest.raises(ValueError, match="more than max_new_tokens=5"):
        make_batch([["12+34=46#46"]], max_new_tokens=5)


def test_completion_loss_mask_combines_rules():
    token_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    mask = completion_loss_mask(token_mask, torch.tensor([2, 0]), torch.tensor([False, True]), loss_on_guidance=False, mask_truncated=True)
    assert mask.tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]]


def test_select_keeps_samples_aligned():
    batch = make_batch([["1#1", "2#2"], ["3#3", "4#4"]], terms=[[1, 2], [3, 4]])
    part = batch.select(torch.tensor([3, 0]))
    assert part.completion_texts == ["4#4", "1#1"]
    assert part.group_ids.tolist() == [1, 0]
    assert [e.id for e in part.examples] == ["ex1", "ex0"]


def test_pad_tokens_an_engine_returns_inside_a_completion_are_not_scored():
    from rlvr.guidance.base import GuidancePlan
    from rlvr.rollout.base import Generation
    from tests.helpers import TOKENIZER, encode

    example = make_example([12, 34], "e")
    pad = TOKENIZER.pad_token_id
    ids = encode("12+34") + [pad] + encode("=46#46") + [TOKENIZER.eos_token_id]
    plan = GuidancePlan(prefix_ids=[[]], guided=[False], length=0.0)
    batch = build_rollout_batch([example], 1, [encode(example.prompt)], plan, [Generation(ids, True)], TOKENIZER, 64, True, False)
    assert batch.token_mask[0].tolist() == [1] * len(ids)  # attended to as generated
    assert batch.loss_mask[0].tolist() == [1] * 5 + [0] + [1] * 7  # but never scored
    assert batch.completion_texts == ["12+34=46#46"]

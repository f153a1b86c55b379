import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlvr.advantages.base import broadcast_to_tokens, group_normalize
from rlvr.advantages.sgpo import SGPOAdvantage
from rlvr.batch import Example, RolloutBatch
from rlvr.data.arithmetic import final_answer, make_example
from rlvr.judges.base import Judge, Verdict
from rlvr.judges.rule import RuleJudge
from rlvr.models.tiny import build_char_tokenizer

TOK = build_char_tokenizer()
FOUR = make_example([1, 2, 3, 4, 5], "four")  # 1+2=3;3+3=6;6+4=10;10+5=15#15 (4 steps)
TWO = make_example([12, 34, 5], "two")  # 12+34=46;46+5=51#51 (2 steps)

# All wrong, first errors at steps 3, 1, 0, 2 of 4: RTS 0.75, 0.25, 0, 0.5. Each is 29 chars + EOS.
FAILED = ("1+2=3;3+3=6;6+4=10;10+5=16#16", "1+2=3;3+3=7;7+4=11;11+5=16#16", "1+2=4;4+3=7;7+4=11;11+5=16#16", "1+2=3;3+3=6;6+4=11;11+5=16#16")
# sigmoid(5 * (RTS - 0.5)) for those RTS, and the group's centred values / unbiased std (worked out by hand).
SHAPED = [0.7772998611746911, 0.22270013882530884, 0.07585818002124355, 0.5]
CENTRED = [0.3833353161693802, -0.17126440618000202, -0.3181063649840673, 0.10603545499468914]
STD = 0.310221769387737
MIXED = ("12+34=46;46+5=51#51", "12+34=46;46+5=52#52", "12+34=46;46+5=51#51", "12+34=47;47+5=52#52")
POSITIVE = ("12+34=46;46+5=51#51",) * 4
SAME_WRONG = ("12+34=47;47+5=52#52",) * 4  # all wrong at step 0: equal shaped rewards


def make_batch(groups: list[tuple[Example, tuple[str, ...]]]) -> RolloutBatch:
    """A roll-out batch as the trainer would build it: char tokens, EOS kept, reward 1 for the right answer."""
    examples = [e for e, responses in groups for _ in responses]
    texts = [t for _, responses in groups for t in responses]
    group_ids = torch.tensor([g for g, (_, responses) in enumerate(groups) for _ in responses])
    completions = [TOK.encode(t, add_special_tokens=False) + [TOK.eos_token_id] for t in texts]
    prompts = [TOK.encode(e.prompt, add_special_tokens=False) for e in examples]
    n, width, prompt_width = len(texts), max(map(len, completions)), max(map(len, prompts))
    completion_ids = torch.full((n, width), TOK.pad_token_id)
    token_mask = torch.zeros(n, width, dtype=torch.long)
    prompt_ids = torch.full((n, prompt_width), TOK.pad_token_id)
    prompt_mask = torch.zeros(n, prompt_width, dtype=torch.long)
    for i, (c, p) in enumerate(zip(completions, prompts)):
        completion_ids[i, : len(c)], token_mask[i, : len(c)] = torch.tensor(c), 1
        prompt_ids[i, prompt_width - len(p) :], prompt_mask[i, prompt_width - len(p) :] = torch.tensor(p), 1
    correct = torch.tensor([final_answer(t) == e.answer for t, e in zip(texts, examples)])
    return RolloutBatch(
        examples=examples,
        group_ids=group_ids,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        token_mask=token_mask,
        loss_mask=token_mask.clone(),
        completion_texts=texts,
        truncated=torch.zeros(n, dtype=torch.bool),
        guided=torch.zeros(n, dtype=torch.bool),
        guidance_tokens=torch.zeros(n, dtype=torch.long),
        rewards=correct.float(),
        correct=correct,
        tokenizer=TOK,
    )


class CountingJudge(RuleJudge):
    def __init__(self):
        super().__init__()
        self.calls, self.responses = 0, 0

    def __call__(self, examples, responses):
        self.calls, self.responses = self.calls + 1, self.responses + len(responses)
        return super().__call__(examples, responses)


class FixedJudge(Judge):
    """Answers every response with the same verdict (a stand-in for an LLM judge)."""

    def __init__(self, verdict: Verdict):
        super().__init__()
        self.verdict = verdict

    def _judge(self, examples, responses):
        return [self.verdict] * len(responses)


class UnparsedJudge(CountingJudge):
    """Its output could not be read; its fallback index is past the end of every response."""

    def _judge(self, examples, responses):
        return [Verdict(7, parsed=False)] * len(responses)


def per_sample(token_advantages: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """The [N] advantage back from [N, C] (every sample here has loss tokens at position 0)."""
    assert bool(batch.loss_mask[:, 0].all())
    return token_advantages[:, 0]


def test_four_kinds_of_group_and_metrics():
    batch = make_batch([(FOUR, FAILED), (TWO, MIXED), (TWO, POSITIVE), (TWO, SAME_WRONG)])
    rewards_before, mask_before = batch.rewards.clone(), batch.loss_mask.clone()
    judge = CountingJudge()
    tokens = SGPOAdvantage(judge)(batch)
    adv = per_sample(tokens, batch)
    grpo = group_normalize(batch.rewards, batch.group_ids, "group")
    # Failed group: graded by hand-computed sigmoid rewards.
    assert adv[:4].tolist() == pytest.approx([c / (STD + 1e-6) for c in CENTRED], abs=1e-5)
    assert adv[:4].tolist() == pytest.approx([1.2356815, -0.5520709, -1.0254160, 0.3418053], abs=1e-5)
    # Mixed group: exactly GRPO. All-positive and equal-RTS groups: exactly zero.
    assert torch.equal(adv[4:8], grpo[4:8])
    assert adv[4:8].tolist() == pytest.approx([0.8660254, -0.8660254, 0.8660254, -0.8660254], abs=1e-5)
    assert torch.equal(adv[8:], torch.zeros(8))
    assert torch.equal(tokens, broadcast_to_tokens(adv, batch.loss_mask))
    # Judge output written to the batch; rewards and masks untouched.
    assert batch.rts[:4].tolist() == [0.75, 0.25, 0.0, 0.5]
    assert torch.isnan(batch.rts[4:12]).all() and batch.rts[12:].tolist() == [0.0] * 4
    assert batch.first_error_step.tolist() == [3, 1, 0, 2] + [-1] * 8 + [0] * 4
    assert torch.equal(batch.rewards, rewards_before) and torch.equal(batch.loss_mask, mask_before)
    # One batched judge call over the 8 responses of the two failed groups.
    assert (judge.calls, judge.responses) == (1, 8)
    m = batch.metrics
    assert m["sgpo/all_negative_frac"] == 0.5
    assert m["sgpo/coloured_frac"] == 0.5  # the failed group is coloured, the equal-RTS one is not
    assert m["sgpo/graded"] == 8
    assert m["sgpo/mean_rts"] == pytest.approx(1.5 / 8)
    assert m["sgpo/judged_std"] == pytest.approx(STD / 2, abs=1e-6)  # mean of 0.3102 and 0
    assert m["sgpo/judged_max_abs_adv"] == pytest.approx(1.2356815, abs=1e-5)
    assert m["judge/parse_failures"] == 0 and m["judge/seconds"] >= 0


def test_advantages_monotone_in_rts_and_shaped_below_correct():
    batch = make_batch([(FOUR, FAILED)])
    adv = per_sample(SGPOAdvantage(RuleJudge())(batch), batch)
    order_by_rts = sorted(range(4), key=lambda i: batch.rts[i].item())
    assert [adv[i].item() for i in order_by_rts] == sorted(adv.tolist())
    assert len(set(adv.tolist())) == 4
    # Even at RTS 1 a wrong answer earns less than a correct one, at the default and at a steep beta.
    for sgpo in (SGPOAdvantage(RuleJudge()), SGPOAdvantage(RuleJudge(), beta=16.0, gamma=0.0)):
        assert sgpo.shaped_reward(torch.tensor([1.0])).item() < 1.0
    assert SGPOAdvantage(RuleJudge()).shaped_reward(torch.tensor([0.75, 0.0])).tolist() == pytest.approx([SHAPED[0], SHAPED[2]])
    with pytest.raises(ValueError, match=r"beta \* \(1 - gamma\) = 50 is too large: a wrong response with RTS 1 would get reward 1.0"):
        SGPOAdvantage(RuleJudge(), beta=50.0, gamma=0.0)


def test_scope_all_incorrect_grades_wrong_answers_of_mixed_groups():
    batch = make_batch([(FOUR, FAILED), (TWO, MIXED)])
    adv = per_sample(SGPOAdvantage(RuleJudge(), scope="all_incorrect")(batch), batch)
    # Mixed rewards become [1, sigmoid(0), 1, sigmoid(-2.5)], normalised by the group std as GRPO does.
    assert adv[4:].tolist() == pytest.approx([0.7981219, -0.3227242, 0.7981219, -1.2735196], abs=1e-5)
    assert batch.rts[4:].isnan().tolist() == [True, False, True, False]
    assert batch.rts[[5, 7]].tolist() == [0.5, 0.0]
    assert adv[:4].tolist() == pytest.approx([c / (STD + 1e-6) for c in CENTRED], abs=1e-5)
    assert batch.metrics["sgpo/all_negative_frac"] == 0.5 and batch.metrics["sgpo/graded"] == 6


@pytest.mark.parametrize(
    "options, divisor",
    [({"normalize": "none"}, 1.0), ({"normalize": "min_std", "min_std": 0.5}, 0.5), ({"normalize": "min_std", "min_std": 0.1}, STD), ({"normalize": "group_std", "eps": 1e-12}, STD)],
)
def test_normalize_modes(options, divisor):
    batch = make_batch([(FOUR, FAILED), (TWO, MIXED)])
    adv = per_sample(SGPOAdvantage(RuleJudge(), **options)(batch), batch)
    assert adv[:4].tolist() == pytest.approx([c / divisor for c in CENTRED], abs=1e-6)
    grpo = group_normalize(batch.rewards, batch.group_ids, "group", options.get("eps", 1e-6))
    assert torch.equal(adv[4:], grpo[4:])  # never touched


@pytest.mark.parametrize("base", ["rloo", "opo", "gpg"])
def test_base_estimator_takes_the_groups_sgpo_does_not_judge(base):
    from rlvr.advantages.gpg import GPGAdvantage
    from rlvr.advantages.opo import OPOAdvantage
    from rlvr.advantages.rloo import RLOOAdvantage

    batch = make_batch([(FOUR, FAILED), (TWO, MIXED)])
    adv = per_sample(SGPOAdvantage(RuleJudge(), base=base)(batch), batch)
    plain = {"rloo": RLOOAdvantage, "opo": OPOAdvantage, "gpg": GPGAdvantage}[base]()
    assert torch.equal(adv[4:], per_sample(plain(batch), batch)[4:])  # the mixed group: the base estimator, untouched
    # The judged all-negative group: the same base estimator on its shaped rewards (one scale, no std division).
    # rloo: r_i - mean of the other 3; opo: equal lengths -> centred; gpg: 6 non-zero shaped rewards of 8 -> 8/6.
    expected = {
        "rloo": [r - (sum(SHAPED) - r) / 3 for r in SHAPED], "opo": CENTRED, "gpg": [c * 8 / 6 for c in CENTRED],
    }[base]
    assert adv[:4].tolist() == pytest.approx(expected, abs=1e-5)
    # RLOO on a mixed group [1, 0, 1, 0]: r_i - mean of the other 3 = +-2/3
    if base == "rloo":
        assert adv[4:].tolist() == pytest.approx([2 / 3, -2 / 3, 2 / 3, -2 / 3])


def test_base_with_scope_all_incorrect_gets_the_shaped_rewards():
    from rlvr.advantages.rloo import RLOOAdvantage

    batch = make_batch([(TWO, MIXED)])
    adv = per_sample(SGPOAdvantage(RuleJudge(), base="rloo", scope="all_incorrect")(batch), batch)
    shaped = torch.tensor([1.0, float(torch.sigmoid(torch.tensor(0.0))), 1.0, float(torch.sigmoid(torch.tensor(-2.5)))])
    assert adv.tolist() == pytest.approx(RLOOAdvantage().per_sample(shaped, batch).tolist(), abs=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"base": "passk"}, r"advantage.base must be one of grpo \| rloo \| opo \| gpg, got 'passk'"),
    ({"base": "rloo", "scale": "batch"}, "advantage.scale is GRPO's option: it needs advantage.base=grpo"),
    ({"base": "gpg", "normalize": "none"}, "advantage.normalize is GRPO's option: it needs advantage.base=grpo"),
    ({"eps": 0.0}, "advantage.eps must be a number > 0, got 0.0"),
    ({"eps": -1}, "advantage.eps must be a number > 0, got -1"),
    ({"mask_after_error": "yes"}, "advantage.mask_after_error must be true or false, got 'yes'"),
])
def test_bad_base_eps_and_flags_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        SGPOAdvantage(RuleJudge(), **options)


def test_rts_in_tokens_counts_loss_tokens_before_the_first_wrong_step():
    batch = make_batch([(FOUR, FAILED)])
    SGPOAdvantage(RuleJudge(), rts="tokens")(batch)
    # The wrong steps start at chars 19, 6, 0, 12 of 30 loss tokens (29 chars + EOS).
    assert batch.rts.tolist() == pytest.approx([19 / 30, 6 / 30, 0.0, 12 / 30])
    # Tokens that are not scored (e.g. guidance) count on neither side.
    batch = make_batch([(FOUR, FAILED)])
    batch.loss_mask[:, :4] = 0
    SGPOAdvantage(RuleJudge(), rts="tokens")(batch)
    assert batch.rts.tolist() == pytest.approx([15 / 26, 2 / 26, 0.0, 8 / 26])


def test_mask_after_error_zeroes_tokens_after_the_wrong_step():
    batch = make_batch([(FOUR, FAILED), (TWO, MIXED)])
    tokens = SGPOAdvantage(RuleJudge(), mask_after_error=True)(batch)
    reference = SGPOAdvantage(RuleJudge())(make_batch([(FOUR, FAILED), (TWO, MIXED)]))
    # Wrong steps: chars [19, 29), [6, 11), [0, 5), [12, 18); the step itself keeps its advantage.
    for i, end in enumerate([29, 11, 5, 18]):
        assert torch.equal(tokens[i, :end], reference[i, :end]) and bool((tokens[i, :end] != 0).all())
        assert torch.equal(tokens[i, end:], torch.zeros(tokens.shape[1] - end))
    assert torch.equal(tokens[4:], reference[4:])  # not judged: not masked


@pytest.mark.parametrize("mode, rts", [("last_step", 0.5), ("first_step", 0.0), ("full", 1.0)])
def test_no_error_found(mode, rts):
    batch = make_batch([(TWO, MIXED[1:2] + SAME_WRONG[:1])])
    SGPOAdvantage(FixedJudge(Verdict(None)), no_error_found=mode)(batch)
    assert batch.rts.tolist() == [rts, rts]
    assert batch.first_error_step.tolist() == [-1, -1]


def test_parse_failures_out_of_range_index_and_empty_response():
    batch = make_batch([(TWO, ("12+34=47;47+5=52#52", "", "12+34=46;46+5=52#52"))])
    judge = UnparsedJudge()
    SGPOAdvantage(judge)(batch)
    # Index 7 is past the 2 steps: the last step (RTS 1/2). The empty response is never judged: RTS 0.
    assert batch.rts.tolist() == [0.5, 0.0, 0.5]
    assert batch.first_error_step.tolist() == [1, -1, 1]
    assert judge.responses == 2 and batch.metrics["judge/parse_failures"] == 2


def test_no_judge_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"SGPOAdvantage needs a step-wise judge, got none: pick one with judge=rule\|llm\|prm"):
        SGPOAdvantage(None)
    with pytest.raises(ValueError, match=r"advantage.scope must be one of all_negative \| all_incorrect, got 'zero_std'"):
        SGPOAdvantage(RuleJudge(), scope="zero_std")
    with pytest.raises(ValueError, match=r"advantage.normalize must be one of group_std \| none \| min_std, got 'batch'"):
        SGPOAdvantage(RuleJudge(), normalize="batch")
    batch = make_batch([(TWO, MIXED)])
    batch.correct = None
    with pytest.raises(ValueError, match="needs batch.rewards and batch.correct"):
        SGPOAdvantage(RuleJudge())(batch)
    batch = make_batch([(TWO, MIXED)])
    batch.tokenizer = None
    with pytest.raises(ValueError, match="rts=tokens or mask_after_error=true needs batch.tokenizer"):
        SGPOAdvantage(RuleJudge(), rts="tokens")(batch)
    batch = make_batch([(TWO, SAME_WRONG)])
    batch.completion_texts[0] = "12+34=47;47+5=53#53"  # no longer what completion_ids decode to
    with pytest.raises(ValueError, match=r"sample 0: completion_texts\[0\] is not part of the decoded completion_ids"):
        SGPOAdvantage(RuleJudge(), mask_after_error=True)(batch)


def test_all_negative_means_no_correct_response_not_zero_reward_std():
    # Shaped rewards (e.g. a format bonus) make a failed group's std non-zero; it is still graded.
    batch = make_batch([(FOUR, FAILED)])
    batch.rewards = torch.tensor([0.1, 0.0, 0.2, 0.0])
    SGPOAdvantage(RuleJudge())(batch)
    assert batch.rts.tolist() == [0.75, 0.25, 0.0, 0.5]
    assert batch.metrics["sgpo/all_negative_frac"] == 1.0


def test_config_defaults_match_and_instantiate():
    root = Path(__file__).parents[1] / "conf"
    advantage = OmegaConf.load(root / "advantage" / "sgpo.yaml")
    cfg = OmegaConf.create({"judge": OmegaConf.load(root / "judge" / "rule.yaml"), "advantage": advantage})
    sgpo = instantiate(cfg.advantage)
    assert isinstance(sgpo, SGPOAdvantage) and isinstance(sgpo.judge, RuleJudge)
    defaults = {k: p.default for k, p in inspect.signature(SGPOAdvantage).parameters.items() if k != "judge"}
    assert {k: v for k, v in OmegaConf.to_container(advantage).items() if k not in ("_target_", "judge")} == defaults
    with pytest.raises(Exception, match="pick one with judge=rule"):
        instantiate(OmegaConf.create({"judge": None, "advantage": advantage}).advantage)


def test_copied_guidance_steps_are_not_credited_when_not_scored():
    """A guided wrong response: with loss_on_guidance=false its copied first step is not its own reasoning."""
    from rlvr.judges.rule import RuleJudge
    from tests.helpers import make_batch, with_rewards

    # 12+34+5+6: reference 12+34=46;46+5=51;51+6=57. Both err in the 2nd step (index 1).
    texts = [["46+5=50;50+6=56#56", "12+34=46;46+5=50;50+6=56#56"]]
    prefixes = [["12+34=46;", ""]]
    rts = {}
    for scored in (True, False):
        batch = make_batch(texts, terms=[[12, 34, 5, 6]], prefixes=prefixes, loss_on_guidance=scored)
        with_rewards(batch, [0.0, 0.0])
        SGPOAdvantage(RuleJudge())(batch)
        rts[scored] = batch.rts.tolist()
    assert rts[True] == pytest.approx([1 / 3, 1 / 3])  # 1 correct step of 3 for both
    assert rts[False] == pytest.approx([0.0, 1 / 3])  # the guided one copied its only correct step

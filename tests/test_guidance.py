"""Guidance schedules: the plan's prefixes, the adaptive / decay rules worked out by hand, metrics, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlvr.batch import Example, RolloutBatch
from rlvr.data.arithmetic import make_example
from rlvr.guidance.base import Guidance
from rlvr.guidance.adaptive import AdaptiveGuidance
from rlvr.guidance.decay import DecayGuidance
from rlvr.guidance.scheduled import FixedGuidance, ScheduledGuidance, round_half_up
from rlvr.models.tiny import build_char_tokenizer

CONF = Path(__file__).resolve().parents[1] / "conf" / "guidance"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def rollout_batch(guided: list[bool], correct: list[bool] | None, group_size: int = 4) -> RolloutBatch:
    """A hand-made batch: only guided/correct matter to observe(); the rest is filled to be valid."""
    n = len(guided)
    ex = make_example([1, 2], "x")
    return RolloutBatch(
        examples=[ex] * n,
        group_ids=torch.arange(n) // group_size,
        prompt_ids=torch.ones(n, 3, dtype=torch.long),
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        completion_ids=torch.ones(n, 2, dtype=torch.long),
        token_mask=torch.ones(n, 2, dtype=torch.long),
        loss_mask=torch.ones(n, 2, dtype=torch.long),
        completion_texts=["1+2=3#3"] * n,
        truncated=torch.zeros(n, dtype=torch.bool),
        guided=torch.tensor(guided, dtype=torch.bool),
        guidance_tokens=torch.zeros(n, dtype=torch.long),
        correct=None if correct is None else torch.tensor(correct, dtype=torch.bool),
    )


def acc_batch(accuracy: float, n: int = 20) -> RolloutBatch:
    """A batch whose mean correctness is exactly `accuracy` (a multiple of 1/n)."""
    hits = round(accuracy * n)
    assert math.isclose(hits / n, accuracy)
    return rollout_batch([False] * n, [True] * hits + [False] * (n - hits))


def run_lengths(schedule: ScheduledGuidance, accuracies: list[float]) -> list[float]:
    """ℓ after each observed step."""
    out = []
    for a in accuracies:
        schedule.observe(acc_batch(a))
        out.append(schedule.length)
    return out


def decode(tok, ids: list[int]) -> str:
    return tok.decode(ids)


# --- adaptive rule ------------------------------------------------------------------------------------------


def test_adaptive_rule_step_by_step():
    g = AdaptiveGuidance(initial_length=4, max_length=8)  # period 3, window 2
    accs = [0.5, 0.5, 0.25,   # ā=.5, a=.25 worse: 4*2 = 8
            0.5, 0.5, 1.0,    # ā=.5 (steps 4,5 only), better: floor(8*.5) = 4
            0.25, 0.75, 0.4,  # ā=.5, worse: 4*1.25 = 5
            0.5, 0.5, 0.25,   # worse: 5*2 = 10 -> clamp at 8
            0.2, 0.2, 1.0,    # better: floor(8*.2) = 1
            0.1, 0.1, 0.9]    # better: floor(1/9) = 0 -> clamp at 1
    expected = [4, 4, 8, 8, 8, 4, 4, 4, 5, 5, 5, 8, 8, 8, 1, 1, 1, 1]
    assert run_lengths(g, accs) == pytest.approx(expected)


def test_adaptive_length_is_exact_so_half_units_round_up():
    # ℓ=1, ā=.5, a_t=.2: ℓ·ā/a_t is exactly 2.5, which hands over 3 steps (a float32 mean made it 2.4999999627 -> 2)
    g = AdaptiveGuidance(initial_length=1, max_length=8)
    assert run_lengths(g, [0.5, 0.5, 0.2]) == [1.0, 1.0, 2.5]
    assert round_half_up(g.length) == 3
    # 3 · (.7 + .5)/2 / .6 is exactly 3: equal accuracies keep ℓ, float sums (0.6000000000000001) would not
    assert run_lengths(AdaptiveGuidance(initial_length=3, max_length=8), [0.7, 0.5, 0.6]) == [3.0, 3.0, 3.0]
    # down: 5 · .3 / .6 = 2.5 floors to 2 exactly, and resumes exactly from its [numerator, denominator] history
    g = AdaptiveGuidance(initial_length=5, max_length=8)
    assert run_lengths(g, [0.1, 0.5, 0.6]) == [5.0, 5.0, 2.0]
    assert g.state_dict()["history"] == [[1, 2], [3, 5]]


def test_adaptive_accepts_an_older_checkpoints_float_history():
    g = AdaptiveGuidance(initial_length=4, max_length=8)
    g.load_state_dict({**AdaptiveGuidance(initial_length=4, max_length=8).state_dict(), "history": [0.5, 0.5], "steps_observed": 2})
    assert run_lengths(g, [0.25]) == [8.0]
    # Floats are read as the small fractions they stand for: mean(.7, .5) is exactly .6, so ℓ stays 3 (at the floats'
    # exact values the mean is just under .6 and ℓ would drop to 2)
    g = AdaptiveGuidance(initial_length=3, max_length=8)
    g.load_state_dict({**AdaptiveGuidance(initial_length=3, max_length=8).state_dict(), "history": [0.7, 0.5], "steps_observed": 2})
    assert run_lengths(g, [0.6]) == [3.0]


def test_adaptive_no_update_before_the_period_ends():
    g = AdaptiveGuidance(initial_length=4, max_length=8)
    # Accuracy collapses at step 2, but only step 3 compares; a3=.45 vs ā=(.9+.1)/2=.5 -> 4*.5/.45.
    assert run_lengths(g, [0.9, 0.1, 0.45]) == pytest.approx([4, 4, 4 * 0.5 / 0.45])


def test_adaptive_increase_keeps_fraction_unless_floored():
    accs = [0.6, 0.6, 0.4]  # ratio 1.5
    assert run_lengths(AdaptiveGuidance(initial_length=3, max_length=10), accs)[-1] == pytest.approx(4.5)
    assert run_lengths(AdaptiveGuidance(initial_length=3, max_length=10, floor_increase=True), accs)[-1] == 4.0


@pytest.mark.parametrize("accs", [[0.0, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.0], [0.25, 0.75, 0.5]])
def test_adaptive_zero_or_equal_accuracy_keeps_length(accs):
    # ā = 0, a_t = 0, or a_t == ā: ℓ stays.
    assert run_lengths(AdaptiveGuidance(initial_length=4, max_length=8), accs) == [4, 4, 4]


def test_adaptive_period_and_window():
    # period 2, window 1: compare with the step just before, at steps 2, 4, 6 only.
    g = AdaptiveGuidance(initial_length=4, max_length=100, period=2, window=1)
    assert run_lengths(g, [0.5, 0.25, 0.8, 0.4, 0.2, 0.8]) == pytest.approx([4, 8, 8, 16, 16, 4])
    # window 3 > period: step 2 has too little history; step 4 compares with mean(.2, .4, .6) = .4.
    g = AdaptiveGuidance(initial_length=4, max_length=100, period=2, window=3)
    assert run_lengths(g, [0.2, 0.4, 0.6, 0.2]) == pytest.approx([4, 4, 4, 8])


def test_adaptive_needs_correctness():
    g = AdaptiveGuidance(initial_length=4, max_length=8)
    with pytest.raises(ValueError, match="batch.correct"):
        g.observe(rollout_batch([False] * 4, None))


# --- decay --------------------------------------------------------------------------------------------------


def test_decay_linear():
    g = DecayGuidance(initial_length=8, final_length=0, total_steps=4, mode="linear")
    assert g.length == 8
    assert run_lengths(g, [0.5] * 6) == pytest.approx([6, 4, 2, 0, 0, 0])


def test_decay_exponential_is_geometric_in_length_plus_one():
    # ℓ+1: 8 -> 1 over 3 steps halves each step: ℓ = 3, 1, 0, then stays 0.
    g = DecayGuidance(initial_length=7, final_length=0, total_steps=3, mode="exponential")
    assert run_lengths(g, [0.5] * 4) == pytest.approx([3, 1, 0, 0], abs=1e-9)


def test_fixed_never_moves():
    g = FixedGuidance(initial_length=3)
    assert run_lengths(g, [0.1, 0.9, 0.1, 0.9]) == [3, 3, 3, 3]


# --- plan ---------------------------------------------------------------------------------------------------

EX = make_example([12, 34, 5, 7], "a")  # steps 12+34=46 ; 46+5=51 ; 51+7=58


def test_plan_steps_prefix_is_first_steps_for_first_k(tok):
    g = FixedGuidance(guided_per_group=2, unit="steps", initial_length=2)
    plan = g.plan([EX, EX], group_size=4, tokenizer=tok)
    assert plan.guided == [True, True, False, False] * 2
    assert decode(tok, plan.prefix_ids[0]) == "12+34=46;46+5=51;"
    assert plan.prefix_ids[0] == plan.prefix_ids[1] == plan.prefix_ids[4]
    assert [plan.prefix_ids[i] for i in (2, 3, 6, 7)] == [[], [], [], []]
    assert plan.length == 2.0 and plan.unguidable == 0


def test_plan_tokens_prefix_is_first_tokens(tok):
    plan = FixedGuidance(guided_per_group=1, unit="tokens", initial_length=5).plan([EX], 3, tok)
    assert decode(tok, plan.prefix_ids[0]) == "12+34"
    assert plan.guided == [True, False, False]


def test_plan_caps_at_all_but_last_unit(tok):
    steps = FixedGuidance(unit="steps", initial_length=10).plan([EX], 2, tok)
    assert decode(tok, steps.prefix_ids[0]) == "12+34=46;46+5=51;"  # 2 of 3 steps
    tokens = FixedGuidance(unit="tokens", initial_length=1000).plan([EX], 2, tok)
    assert decode(tok, tokens.prefix_ids[0]) == EX.solution[:-1] == "12+34=46;46+5=51;51+7=5"


@pytest.mark.parametrize("length, units", [(1.4, 1), (1.5, 2), (2.5, 3), (0.49, 0)])
def test_plan_rounds_length_half_up(tok, length, units):
    plan = FixedGuidance(unit="tokens", initial_length=length).plan([EX], 2, tok)
    assert len(plan.prefix_ids[0]) == units
    assert plan.guided[0] == (units > 0)


def test_length_rounding_to_zero_guides_nobody(tok):
    bare = Example(id="b", prompt="1+1=", answer="2")
    plan = FixedGuidance(initial_length=0.4).plan([EX, bare], 4, tok)
    assert plan.guided == [False] * 8 and all(p == [] for p in plan.prefix_ids)
    assert plan.unguidable == 0  # nobody would have been guided


def test_example_without_steps_is_never_guided_and_counted(tok):
    bare = Example(id="b", prompt="1+1=", answer="2")
    for unit in ("steps", "tokens"):
        plan = FixedGuidance(unit=unit, initial_length=2).plan([bare, EX, bare], 2, tok)
        assert plan.guided == [False, False, True, True, False, False]  # k=2 of 2
        assert plan.prefix_ids[0] == plan.prefix_ids[4] == []
        assert plan.unguidable == 2


def test_one_step_reference_caps_to_unguided(tok):
    one = make_example([3, 4], "o")  # a single step: handing it over would hand over the answer
    plan = FixedGuidance(unit="steps", initial_length=3).plan([one], 2, tok)
    assert plan.guided == [False, False] and plan.prefix_ids == [[], []]
    assert plan.unguidable == 0


@pytest.mark.parametrize("k, group_size, expected", [(3, 4, 3), (4, 4, 4), (0.5, 4, 2), (0.3, 5, 2), (0.25, 4, 1), (0.2, 8, 2)])
def test_guided_per_group_count(tok, k, group_size, expected):
    # 0.3*5 = 1.5 -> 2 (half up); 0.2*8 = 1.6 -> 2.
    plan = FixedGuidance(guided_per_group=k, initial_length=1).plan([EX, EX], group_size, tok)
    for g in range(2):
        group = plan.guided[g * group_size : (g + 1) * group_size]
        assert group == [True] * expected + [False] * (group_size - expected)


def test_base_guidance_guides_nobody(tok):
    plan = Guidance().plan([EX, EX], 3, tok)
    assert plan.guided == [False] * 6 and plan.prefix_ids == [[]] * 6 and plan.length == 0.0


# --- observe metrics ----------------------------------------------------------------------------------------


def test_observe_metrics(tok):
    g = FixedGuidance(initial_length=2)
    bare = Example(id="b", prompt="1+1=", answer="2")
    g.plan([EX, bare], 4, tok)
    batch = rollout_batch([True, True, False, False, False, False, False, False],
                          [True, False, True, False, False, True, True, False])
    g.observe(batch)
    m = batch.metrics
    assert m["guidance/length"] == 2.0
    assert m["guidance/guided_frac"] == 0.25
    assert m["guidance/accuracy_guided"] == 0.5
    assert m["guidance/accuracy_unguided"] == 0.5  # 3 of 6
    assert m["guidance/unguidable"] == 1.0


def test_observe_omits_accuracy_of_empty_side():
    g = FixedGuidance(initial_length=2)
    batch = rollout_batch([False] * 4, [True, False, False, False])
    g.observe(batch)
    assert "guidance/accuracy_guided" not in batch.metrics
    assert batch.metrics["guidance/accuracy_unguided"] == 0.25
    assert not any(math.isnan(v) for v in batch.metrics.values())


def test_observe_logs_length_used_before_it_moves():
    g = AdaptiveGuidance(initial_length=4, max_length=8)
    batches = [acc_batch(a) for a in (0.5, 0.5, 0.25)]
    for b in batches:
        g.observe(b)
    assert batches[2].metrics["guidance/length"] == 4.0  # step 3 rolled out with ℓ=4
    assert g.length == 8.0  # ...and step 4 will use 8


# --- resume -------------------------------------------------------------------------------------------------

ACCS = [0.5, 0.5, 0.25, 0.5, 0.5, 1.0, 0.25, 0.75, 0.4, 0.5, 0.5, 0.25, 0.2, 0.2, 1.0]


@pytest.mark.parametrize("cut", [1, 2, 3, 7])
def test_adaptive_state_dict_resumes_exactly(cut):
    straight = run_lengths(AdaptiveGuidance(initial_length=4, max_length=8), ACCS)
    first = AdaptiveGuidance(initial_length=4, max_length=8)
    head = run_lengths(first, ACCS[:cut])
    state = first.state_dict()
    run_lengths(first, [0.9, 0.1, 0.9])  # the saved state must not alias the live one
    resumed = AdaptiveGuidance(initial_length=4, max_length=8)
    resumed.load_state_dict(state)
    assert head + run_lengths(resumed, ACCS[cut:]) == pytest.approx(straight)


def test_decay_state_dict_resumes_exactly():
    make = lambda: DecayGuidance(initial_length=7, final_length=0, total_steps=5, mode="exponential")  # noqa: E731
    straight = run_lengths(make(), [0.5] * 7)
    first = make()
    head = run_lengths(first, [0.5] * 2)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert resumed.steps_observed == 2
    assert head + run_lengths(resumed, [0.5] * 5) == pytest.approx(straight)


def test_load_state_dict_rejects_foreign_state():
    with pytest.raises(ValueError, match="missing"):
        AdaptiveGuidance(initial_length=4, max_length=8).load_state_dict({"length": 3.0})


# --- bad config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guided_per_group=0), "guided_per_group must be >= 1"),
        (dict(guided_per_group=1.0), r"must be in \(0, 1\)"),
        (dict(guided_per_group=True), "guided_per_group must be an int"),
        (dict(guided_per_group="2"), "guided_per_group must be an int"),
        (dict(unit="chars"), r"guidance.unit must be one of tokens \| steps, got 'chars'"),
        (dict(initial_length=-1), "guidance.initial_length must be a number >= 0, got -1"),
        (dict(initial_length=5, max_length=3), r"initial_length \(5\) exceeds guidance.max_length \(3\)"),
    ],
)
def test_bad_common_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FixedGuidance(**kwargs)


def test_guided_per_group_checked_against_group_size(tok):
    with pytest.raises(ValueError, match="guided_per_group=5 exceeds the group size 4"):
        FixedGuidance(guided_per_group=5).plan([EX], 4, tok)
    with pytest.raises(ValueError, match="rounds to 0 guided roll-outs"):
        FixedGuidance(guided_per_group=0.1).plan([EX], 4, tok)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="cosine"), r"guidance.mode must be one of linear \| exponential, got 'cosine'"),
        (dict(total_steps=0), "guidance.total_steps must be an integer >= 1, got 0"),
        (dict(final_length=-1), "guidance.final_length must be a number >= 0, got -1"),
        (dict(final_length=9, max_length=8, initial_length=2), "final_length .* exceeds guidance.max_length"),
    ],
)
def test_bad_decay_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecayGuidance(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(initial_length=4), "max_length must be set"),
        (dict(initial_length=0.5, max_length=8), "initial_length must be >= 1"),
        (dict(initial_length=4, max_length=8, period=0), "period must be an integer >= 1"),
        (dict(initial_length=4, max_length=8, window=1.5), "window must be an integer >= 1"),
    ],
)
def test_bad_adaptive_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveGuidance(**kwargs)


# --- YAML ---------------------------------------------------------------------------------------------------


def test_yaml_configs_instantiate():
    # decay.yaml takes its length from ${max_steps} of the composed config: give it one here
    runs_for = {"decay": {"total_steps": 300}}
    built = {
        name: instantiate(OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), runs_for.get(name, {})))
        for name in ("none", "fixed", "decay", "adaptive")
    }
    assert type(built["none"]) is Guidance
    adaptive = built["adaptive"]
    assert isinstance(adaptive, AdaptiveGuidance)
    assert (adaptive.period, adaptive.window, adaptive.guided_per_group) == (3, 2, 2)  # the authors' settings
    assert adaptive.length == adaptive.max_length  # the authors start at ℓ_max
    assert isinstance(built["decay"], DecayGuidance) and built["decay"].mode == "linear"
    assert isinstance(built["fixed"], FixedGuidance) and built["fixed"].loss_on_guidance is True

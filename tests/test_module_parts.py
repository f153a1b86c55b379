"""The module's pure parts: learning-rate schedule, algorithm config checks, early run checks, the prompt stream."""

import math

import pytest
import torch
from hydra import compose, initialize_config_module

from rlvr.algorithm import AlgorithmConfig
from rlvr.data.arithmetic import ArithmeticTask
from rlvr.data.stream import PromptStream
from rlvr.optim import warmup_cosine, warmup_cosine_schedule
from rlvr.train import check_run_options


def test_warmup_then_cosine_to_min_ratio():
    f = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)


def test_schedule_node_builds_a_lambda_schedule_and_checks_its_options():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = warmup_cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.5)
    assert schedule.get_last_lr() == [1.0]  # step 0 of a 2-step warm-up: half the lr
    with pytest.raises(ValueError, match="scheduler.min_lr_ratio must be a number >= 0 and <= 1"):
        warmup_cosine_schedule(optimizer, total_steps=10, min_lr_ratio=2)


def test_algorithm_config_rejects_bad_values():
    assert AlgorithmConfig(ppo_epochs=2, mini_batches=4).optimizer_steps_per_rollout == 8
    assert AlgorithmConfig(truncation="mask").mask_truncated and not AlgorithmConfig().mask_truncated
    with pytest.raises(ValueError, match="keep \\| mask"):
        AlgorithmConfig(truncation="drop")
    with pytest.raises(ValueError, match="algorithm.ppo_epochs must be an integer >= 1, got 0"):
        AlgorithmConfig(ppo_epochs=0)
    with pytest.raises(ValueError, match="algorithm.max_grad_norm"):
        AlgorithmConfig(max_grad_norm=-1.0)


@pytest.mark.parametrize("override, message", [
    ("+trainer.max_steps=5", "trainer.max_steps is not a setting"),
    ("max_steps=0", "max_steps must be an integer >= 1"),
    ("trainer.precision=16-mixed", "bf16-mixed"),
    ("algorithm.mini_batches=65", "exceeds the 64 samples"),
    ("rollout.num_generations=1", "a group needs >= 2 roll-outs"),
    ("rollout.temperature=0", "temperature > 0"),
    ("optimizer.lr=-0.001", "optimizer.lr must be a number > 0, got -0.001"),
    ("optimizer.lr=0", "optimizer.lr must be a number > 0, got 0"),
    ("scheduler.min_lr_ratio=3", "scheduler.min_lr_ratio must be a number >= 0 and <= 1"),
])
def test_run_options_fail_before_any_model_loads(override, message):
    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train", overrides=[override])
    algorithm = AlgorithmConfig(**cfg.algorithm)
    with pytest.raises(ValueError, match=message):
        check_run_options(cfg, algorithm)


EXAMPLES = ArithmeticTask(train_size=10, val_size=4, seed=3).train()


def test_stream_covers_each_epoch_once_and_reshuffles():
    stream = PromptStream(EXAMPLES, prompts_per_step=5, seed=0)
    first = stream.next() + stream.next()
    second = stream.next() + stream.next()
    ids = sorted(e.id for e in EXAMPLES)
    assert sorted(e.id for e in first) == ids and sorted(e.id for e in second) == ids
    assert [e.id for e in first] != [e.id for e in second]


def test_stream_resumes_where_it_stopped():
    straight = PromptStream(EXAMPLES, 3, seed=1)
    expected = [[e.id for e in straight.next()] for _ in range(6)]
    stopped = PromptStream(EXAMPLES, 3, seed=1)
    got = [[e.id for e in stopped.next()] for _ in range(2)]
    resumed = PromptStream(EXAMPLES, 3, seed=1)
    resumed.load_state_dict(stopped.state_dict())
    got += [[e.id for e in resumed.next()] for _ in range(4)]
    assert got == expected
    with pytest.raises(ValueError, match="covered 10 examples"):
        PromptStream(EXAMPLES[:5], 3).load_state_dict(stopped.state_dict())


def test_ranks_take_disjoint_prompts_of_one_global_stream():
    single = PromptStream(EXAMPLES, 4, seed=2)
    global_order = [e.id for e in single.next()] + [e.id for e in single.next()]
    ranks = [PromptStream(EXAMPLES, 2, seed=2) for _ in range(2)]
    per_step = [[e.id for e in ranks[r].next(rank=r, world_size=2)] for r in range(2)]
    assert per_step[0] + per_step[1] == global_order[:4]
    assert ranks[0].position == ranks[1].position == 4


def test_auto_resume_finds_the_run_directorys_last_checkpoint_or_starts_fresh(tmp_path):
    from rlvr.train import resume_checkpoint

    assert resume_checkpoint("auto", tmp_path) is None  # nothing to resume: a fresh run (e.g. a Slurm job's first start)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_checkpoint("auto", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(FileExistsError, match="already holds a run"):
        resume_checkpoint(None, tmp_path)


def test_a_corrupt_checkpoint_names_the_file_and_the_ones_beside_it(tmp_path):
    from rlvr.train import read_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # a write cut short
    (tmp_path / "checkpoints" / "step000100.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint .*last.ckpt cannot be read .*other checkpoints there: step000100.ckpt"):
        read_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))


def test_checkpoints_are_written_atomically_beside_their_target(tmp_path, monkeypatch):
    from rlvr.state import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)
    assert torch.load(target)["global_step"] == 1

    def cut_short(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="No space left"):  # the run stops: no silent success
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["global_step"] == 1  # the old checkpoint, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # nothing half-written left behind


def test_the_trainer_saves_through_the_atomic_writer(tmp_path):
    from rlvr.state import AtomicCheckpointIO
    from rlvr.train import build_trainer

    with initialize_config_module("rlvr.conf", version_base="1.3"):
        cfg = compose("train")
    assert isinstance(build_trainer(cfg, tmp_path, 1).strategy.checkpoint_io, AtomicCheckpointIO)

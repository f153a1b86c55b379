"""`data.task_shots`: worked examples drawn from the task's own training problems (issue 22's SmolLM2 regime)."""

import pytest

from rlvr.data.arithmetic import ArithmeticTask, target_text
from rlvr.data.prompts import PromptEncoder
from rlvr.models.tiny import build_char_tokenizer


def test_task_shots_are_the_first_training_problems_never_validation_ones():
    task = ArithmeticTask(min_terms=4, max_terms=4, max_value=9, train_size=200, val_size=50, seed=1, task_shots=5)
    train, val = task.train(), {e.prompt for e in task.val()}
    assert task.worked_examples == tuple((e.prompt, target_text(e)) for e in train[:5])
    assert not {p for p, _ in task.worked_examples} & val
    assert all(p.count("+") == 3 for p, _ in task.worked_examples)  # the task's own shape, not the shipped 3-digit shots
    assert ArithmeticTask.worked_examples != task.worked_examples  # the class default is untouched


def test_without_task_shots_the_shipped_examples_stay():
    assert ArithmeticTask(train_size=10, val_size=4).worked_examples is ArithmeticTask.worked_examples


def test_task_shots_reach_the_prompt():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    task = ArithmeticTask(min_terms=4, max_terms=4, max_value=9, train_size=50, val_size=10, seed=1, task_shots=2)
    text = tokenizer.decode(PromptEncoder(task, tokenizer, bare=False)(task.val()[0]))
    for problem, solution in task.worked_examples:
        assert problem in text and solution in text


@pytest.mark.parametrize("bad", [-1, "two", None, 1.5])
def test_task_shots_is_checked(bad):
    with pytest.raises(ValueError, match="data.task_shots"):
        ArithmeticTask(train_size=10, val_size=4, task_shots=bad)

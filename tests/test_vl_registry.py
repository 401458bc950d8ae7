"""The VL task registry: lookup by name, one-line errors, registering a task, and no task-name dispatch outside it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmd2v2.config import ConfigError
from mmd2v2.vl.config import load_vl_config
from mmd2v2.vl.tasks import TASKS, get_task, register_task
from mmd2v2.vl.tasks.snli_ve import SNLIVE

VL = Path(__file__).parent.parent / "mmd2v2" / "vl"
NAME = r"""["'](?:vqa|snli_ve|vcr)["']"""
# a task name compared (==, !=, in, is, case), or a table keyed by task names
DISPATCH = re.compile(rf"(?:==|!=|\bin|\bis|\bcase)\s*[(\[{{]?\s*{NAME}|{NAME}\s*(?:==|!=|\bin\b|:)")


def test_the_three_tasks_are_registered_with_their_layout() -> None:
    assert sorted(TASKS) == ["snli_ve", "vcr", "vqa"]
    assert {name: (task.main_metric, task.texts_per_example) for name, task in TASKS.items()} == {
        "vqa": ("vqa_accuracy", 1),
        "snli_ve": ("accuracy", 1),
        "vcr": ("q2a", 4),
    }
    assert get_task("vcr").num_outputs(["0", "1", "2", "3"]) == 1 and get_task("vqa").num_outputs(["a", "b"]) == 2


def test_an_unknown_task_is_refused_in_one_line_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"^unknown VL task 'gqa' \(known: snli_ve, vcr, vqa\)$"):
        get_task("gqa")
    with pytest.raises(ConfigError, match=r"^config key 'task.name': unknown VL task 'gqa' \(known: snli_ve, vcr"):
        load_vl_config(None, ["task.name=gqa"])


@pytest.fixture
def another_task() -> Iterator[type[SNLIVE]]:
    class Entailment(SNLIVE):
        name = "entailment_test"

    yield register_task(Entailment)
    TASKS.pop(Entailment.name)


def test_a_registered_task_can_be_configured_and_is_registered_once(another_task: type[SNLIVE]) -> None:
    assert load_vl_config(None, [f"task.name={another_task.name}"]).task.name == another_task.name
    assert isinstance(get_task(another_task.name), another_task)
    with pytest.raises(ValueError, match="registered twice"):
        register_task(another_task)


def test_the_pattern_finds_name_dispatch() -> None:
    for line in ('if task == "vcr":', "x = 1 if name != 'vqa' else 2", 'UNITS = {"vqa": "questions"}', 'case "vcr":'):
        assert DISPATCH.search(line), line
    for line in ('name: str = "vqa"  # a registered task', '(folder / "vqa").mkdir()', 'get_task("vqa")'):
        assert not DISPATCH.search(line), line


def test_no_module_of_mmd2v2_vl_outside_the_tasks_compares_task_names() -> None:
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(VL.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if DISPATCH.search(line)
    ]
    assert not found, "task-name dispatch outside mmd2v2/vl/tasks/ (give the task class a method instead):\n" + (
        "\n".join(found)
    )

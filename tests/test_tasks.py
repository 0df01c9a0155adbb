"""The task axis has one room per task (orinflow/tasks): outside the rooms and the loader that reads a checkpoint's
task, no code compares a task with a task's name."""
import ast

import pytest

from conftest import ROOT
from orinflow.errors import OrinflowError
from orinflow.tasks import TASKS, task_room

ALLOWED = ("orinflow/tasks/", "orinflow/models/ultralytics.py")  # the rooms, and the loader that picks one


def _is_task(node: ast.AST) -> bool:
    """`task`, `x.task`, `x["task"]`."""
    if isinstance(node, ast.Name):
        return node.id == "task"
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    return False


def _is_name(node: ast.AST) -> bool:
    """A task's name, or a collection of them, written literally."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_name(e) for e in node.elts)
    return False


def task_branches(source: str) -> int:
    """Comparisons of a task with a literal name (`task == "detect"`, `x.task in ("a", "b")`, either side)."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_task(s) for s in sides) and any(_is_name(s) for s in sides):
                count += 1
    return count


def test_only_the_rooms_and_the_loader_branch_on_a_task_name():
    found = {str(p.relative_to(ROOT)): n for p in (ROOT / "orinflow").rglob("*.py")
             if not str(p.relative_to(ROOT)).startswith(ALLOWED) and (n := task_branches(p.read_text()))}
    assert found == {}


def test_the_count_finds_each_form_of_branch():
    source = ('a = task == "detect"\nb = model.task != "classify"\nc = record["task"] in ("detect", "segment")\n'
              'd = "pose" == x.task\ne = task == other.task\nf = room.task_name == "detect"\n')
    assert task_branches(source) == 4


def test_every_room_answers_the_interface():
    for name, room in TASKS.items():
        assert room.name == name and task_room(name) is room
        assert len(room.metric_keys) == 2 and room.headline and room.headline_label and room.label_tasks
    with pytest.raises(OrinflowError, match="not one orinflow knows"):
        task_room("obb")

"""One room per task (classify, detect, segment, pose): each owns what differs between tasks, behind the `Task`
interface (tasks/base.py). The rest of orinflow asks `task_room(name)` and does not branch on the name.

Below the rooms sit what they share: image fitting (image.py), box decode and NMS (boxes.py), average
precision (ap.py), masks (masks.py) and keypoint similarity (keypoints.py). Nothing here imports the rest of
orinflow, so every layer may ask a room.
"""
from __future__ import annotations

from ..errors import OrinflowError
from .base import Scoring, Task
from .classify import CLASSIFY
from .detect import DETECT
from .pose import POSE
from .segment import SEGMENT

TASKS: dict[str, Task] = {room.name: room for room in (DETECT, SEGMENT, POSE, CLASSIFY)}

__all__ = ["TASKS", "Scoring", "Task", "task_room"]


def task_room(name: str | None) -> Task:
    """The room of task `name`; one line naming the known tasks for any other."""
    room = TASKS.get(name) if isinstance(name, str) else None
    if room is None:
        raise OrinflowError(f"task {name!r} is not one orinflow knows ({', '.join(TASKS)})")
    return room

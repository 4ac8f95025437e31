"""What a replay runs: the workers' own note of a parked step, which the domain keeps on
the dead letter without reading it (`DeadLetterRecord.redelivery`, JSON) and hands back
in the replay's outbox message.

Written when a step is parked (tasks.dead_letters.park), read by the replay publisher
(tasks.handoff.replay_dead_letter) and shown to operators as the admin API's `args`,
`kwargs` and `chain`. Nothing below `tasks/` knows its shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Redelivery:
    task_name: str  # the Celery task to run again
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The links of its chain that had not run yet, as Celery signature dicts.
    chain: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_name": self.task_name,
            "args": self.args,
            "kwargs": self.kwargs,
            "chain": self.chain,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Redelivery:
        return cls(
            task_name=value["task_name"],
            args=list(value.get("args") or []),
            kwargs=dict(value.get("kwargs") or {}),
            chain=list(value.get("chain") or []),
        )

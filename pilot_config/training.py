"""Operator training on the twin (``training:`` in the plant YAML): session clock, automatic snapshots.

Times are plant seconds unless the name says minutes. The session ticks every ``tick_s`` (operator
and instructor actions, alarms and the trace are evaluated on that grid); every
``autosnapshot_every_min`` plant-minutes a snapshot is kept in memory (the last ``autosnapshot_keep``)
for backtracking. ``near_breakthrough_prerun_h``: how long the design start is run before a session
that starts "with a column near breakthrough" (the carousel's lag column then breaks through
within the first hour).
"""

from __future__ import annotations

from pydantic import Field

from .base import StrictModel


class TrainingConfig(StrictModel):
    tick_s: float = Field(60.0, ge=1, le=600, description="session tick: actions and alarms on this grid")
    autosnapshot_every_min: float = Field(10.0, gt=0, le=1440, description="automatic snapshot period, plant-minutes")
    autosnapshot_keep: int = Field(12, ge=1, le=1000, description="automatic snapshots kept for backtracking")
    default_speed: float = Field(10.0, ge=0.5, le=100, description="plant seconds per wall second (CLI default)")
    near_breakthrough_prerun_h: float = Field(11.0, ge=0, le=48, description="design start run this long first")
    operator: str = Field("trainee", min_length=1, max_length=64, description="operator name in the alarm journal")

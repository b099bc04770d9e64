"""`RecordingOptions`: what a run records and where, checked once, passed as one value."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from relayrl_gym.errors import ConfigError
from relayrl_gym.sinks.base import DEFAULT_SINK_ROOT

__all__ = ["RecordingOptions"]


@dataclass(frozen=True)
class RecordingOptions:
    """The recording arguments of `relayrl_gym.wrap` (see there), as one checked value.

    >>> RecordingOptions(sink=None).recording
    False
    >>> RecordingOptions(flush_interval=0)
    Traceback (most recent call last):
    ...
    relayrl_gym.errors.ConfigError: `flush_interval` must be > 0 seconds, got 0
    """

    #: A directory, URL, `Sink`, a list of those, or None (record nothing).
    sink: Any = DEFAULT_SINK_ROOT
    #: The run's name (None: env id, UTC time and a random suffix).
    run_id: str | None = None
    #: Seconds between time-based flushes (the most a crash can lose).
    flush_interval: float = 1.0
    #: Record each step's info dict as JSON.
    record_info: bool = True
    #: Rows per recorded Arrow batch (None: sized to about 8 MiB).
    batch_rows: int | None = None
    #: Where rows wait while a sink is down (None: next to the Arrow sink, else
    #: ``relayrl_runs/_spill``).
    spill_dir: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.flush_interval, int | float) or not self.flush_interval > 0:
            raise ConfigError(f"`flush_interval` must be > 0 seconds, got "
                              f"{self.flush_interval!r}")
        if self.batch_rows is not None and (
                isinstance(self.batch_rows, bool) or not isinstance(self.batch_rows, int)
                or self.batch_rows < 1):
            raise ConfigError(f"`batch_rows` must be an int >= 1 or None, got "
                              f"{self.batch_rows!r}")

    @property
    def recording(self) -> bool:
        """Whether anything is recorded (a sink is given)."""
        return self.sink is not None

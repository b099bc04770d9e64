"""Opening a run's recording pipeline: sinks started, a background writer, a recorder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from relayrl_gym.core.options import RecordingOptions
from relayrl_gym.recording.recorder import Recorder
from relayrl_gym.recording.writer import BackgroundWriter
from relayrl_gym.schema.transitions import TransitionSchema
from relayrl_gym.sinks.base import Sink, open_sink

__all__ = ["RunRecording", "open_recording"]

log = logging.getLogger(__name__)


class RunRecording:
    """One run's recording pipeline: its started sinks behind a background writer, and the
    recorder that feeds the writer."""

    def __init__(self, run_id: str, recorder: Recorder, writer: BackgroundWriter,
                 run_path: Path | None) -> None:
        self.run_id, self.recorder, self.writer, self.run_path = run_id, recorder, writer, run_path

    def flush(self) -> None:
        """Hands every recorded row to the writer and waits until the sinks have it."""
        self.recorder.flush()

    def close(self, timeout: float = 30.0) -> None:
        """Flushes the recorder, then stops the writer (even when the flush failed)."""
        try:
            self.recorder.close()
        finally:
            self.writer.close(timeout)


def open_recording(
    options: RecordingOptions,
    run_id: str,
    build_schema: Callable[[list[Sink]], TransitionSchema],
    actor_ids: list[str],
) -> RunRecording:
    """Opens and starts every sink of ``options.sink`` (one spec or a list), then the writer
    and the recorder of the run ``run_id``.

    ``build_schema`` gets the opened sinks (their kinds go into the run description). If a
    sink fails to start, every sink is closed again and the error raised.
    """
    sink = options.sink
    specs = list(sink) if isinstance(sink, list | tuple) else [sink]
    sinks: list[Sink] = [open_sink(s) for s in specs]
    schema = build_schema(sinks)
    try:
        for s in sinks:
            s.start(run_id, schema.arrow)
    except BaseException:
        for s in sinks:  # started or not: release connections and files
            try:
                s.close()
            except Exception:
                log.exception("closing sink %r after a failed start", s)
        raise
    run_path = next((s.run_path for s in sinks if s.run_path is not None), None)
    writer = BackgroundWriter(sinks, flush_interval=options.flush_interval,
                              name=f"relayrl-writer-{run_id}", run_id=run_id,
                              spill_dir=options.spill_dir)
    recorder = Recorder(schema, run_id, actor_ids, writer=writer, batch_rows=options.batch_rows,
                        obs_once=all(s.stores_obs_once for s in sinks))
    return RunRecording(run_id, recorder, writer, run_path)

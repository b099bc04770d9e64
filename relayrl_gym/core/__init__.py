"""The engine's own types: the columns of a step (`TransitionBatch`), where episodes start and
end (`EpisodeTracker`), and what a run records (`RecordingOptions`)."""

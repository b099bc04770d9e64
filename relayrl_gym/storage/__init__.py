"""Run directories on disk: the files of a run, written with commit semantics and read back."""

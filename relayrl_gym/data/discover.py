"""What `relayrl_gym.load` is given, as the runs it names: a run directory, a folder of runs
(any depth), a glob, a list of any of these, or a database URL (one run or all of them)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from relayrl_gym.data.sources import ArrowRun, RunSource, SqlRun, spaces_key
from relayrl_gym.data.sql_reader import list_sql_runs
from relayrl_gym.errors import DatasetError
from relayrl_gym.sinks.base import SQL_SCHEMES, url_scheme
from relayrl_gym.sinks.sql import split_run_query
from relayrl_gym.storage.run_dir import RUN_FILE

__all__ = ["Spec", "find_runs"]

#: What names runs: a path or URL, or a list of them.
Spec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

_GLOB_CHARS = frozenset("*?[")


def find_runs(spec: Spec, *, same_spaces: bool = True) -> list[RunSource]:
    """The runs ``spec`` names, each once; with ``same_spaces``, all with the same observation
    and action spaces.

    Raises:
        DatasetError: nothing recorded there, one run found twice at two places, or (with
            ``same_spaces``) runs with different spaces (the message lists the groups and how
            to load one).
    """
    found = _find(spec)
    if not found:
        raise DatasetError(f"no recorded runs in {spec!r}")
    runs: dict[str, RunSource] = {}
    for run in found:
        seen = runs.get(run.run_id)
        if seen is None:
            runs[run.run_id] = run
        elif _place(seen) != _place(run):
            raise DatasetError(f"run {run.run_id!r} is at both {seen.location!r} and "
                               f"{run.location!r} (a copy?); load one of them so that no "
                               "transition is read twice")
    if same_spaces:
        _check_spaces(list(runs.values()))
    return list(runs.values())


def _place(run: RunSource) -> str:
    """Where a run is, one spelling per place (a folder's absolute, resolved path)."""
    return str(run.path.resolve()) if isinstance(run, ArrowRun) else run.location


def _find(spec: Spec) -> list[RunSource]:
    if isinstance(spec, (list, tuple)):
        return [run for item in spec for run in _find(item)]
    if isinstance(spec, str) and url_scheme(spec) in SQL_SCHEMES:
        return _sql_runs(spec)
    if isinstance(spec, str) and spec.startswith("minari:"):
        from relayrl_gym.data.minari_io import MinariRun

        return [MinariRun(spec[len("minari:"):])]
    if isinstance(spec, str) and spec.startswith("arrow://"):
        spec = spec[len("arrow://"):]
    if isinstance(spec, str) and _GLOB_CHARS & set(spec) and not Path(spec).exists():
        runs = _matched_runs(sorted(glob.glob(spec, recursive=True)))
        if not runs:
            raise DatasetError(f"no recorded run matches {spec!r}")
        return [ArrowRun(run) for run in runs]
    path = Path(spec)  # type: ignore[arg-type]
    if not path.exists():
        raise DatasetError(f"no recorded run at {str(path)!r}; pass a run directory such as "
                           "envs.run_path, a folder of runs such as relayrl_runs, or a "
                           "database URL")
    if path.is_dir() and not (path / RUN_FILE).exists():
        runs = _run_dirs(path)
        if not runs:
            raise DatasetError(f"{str(path)!r} is not a relayrl-gym run directory (no "
                               f"{RUN_FILE}) and no folder under it holds a run")
        return [ArrowRun(run) for run in runs]
    return [ArrowRun(path)]


def _matched_runs(matches: list[str]) -> list[Path]:
    """The run directories a glob's matches name, each once: a run, the runs under a folder,
    the run a file belongs to (its ``_run.json``, a part); other files and folders (a plot, a
    TensorBoard folder beside the runs) name none."""
    runs: dict[Path, None] = {}
    for match in matches:
        path = Path(match)
        if path.is_dir():
            runs.update(dict.fromkeys(_run_dirs(path)))
        elif (path.parent / RUN_FILE).is_file():
            runs[path.parent] = None
    return list(runs)


def _run_dirs(root: Path) -> list[Path]:
    """The run directories under ``root`` at any depth (hidden folders, such as spills being
    written, skipped; nothing under a run directory is another run)."""
    found: list[Path] = []
    for parent, dirs, files in os.walk(root):
        if RUN_FILE in files:
            found.append(Path(parent))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _sql_runs(url: str) -> list[RunSource]:
    db_url, run_id = split_run_query(url)
    if run_id is not None:
        return [SqlRun(db_url, run_id)]
    run_ids = list_sql_runs(db_url)
    if not run_ids:
        raise DatasetError(f"the database {db_url!r} holds no recorded runs")
    return [SqlRun(db_url, r) for r in run_ids]


def _check_spaces(runs: list[RunSource]) -> None:
    groups: dict[tuple[str, str], list[RunSource]] = {}
    for run in runs:
        groups.setdefault(spaces_key(run.arrow), []).append(run)
    if len(groups) < 2:
        return
    lines = []
    for i, members in enumerate(groups.values(), 1):
        s = members[0].schema
        names = ", ".join(m.run_id for m in members[:5]) + (" ..." if len(members) > 5 else "")
        lines.append(f"  group {i}: observations {s.observation_space}, actions "
                     f"{s.action_space}: {len(members)} run(s): {names}")
    example = [m.location for m in next(iter(groups.values()))][:3]
    raise DatasetError(
        f"these {len(runs)} runs have {len(groups)} different pairs of observation and action "
        "spaces, and one dataset holds one pair:\n" + "\n".join(lines)
        + f"\nload one group, e.g. relayrl_gym.load({example!r})")

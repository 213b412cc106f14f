"""The output folder of a command: it never deletes, nor silently writes into, what it did not make.

`verl-avsd demo --output .` used to `rmtree` the current directory. Every command that writes a
folder (demo, report, the toy study) now goes through `claim_output_dir`:

    missing or empty folder          -> created / used; a marker file `.verl-avsd` names the command
    a previous output of the command -> kept as is (`keep`, the study resumes there), or, with
                                        --overwrite, the command's own entries in it are removed
    (marker of this command, or every entry is one the command writes)
    any other non-empty folder       -> refused with a clear message; with --overwrite the command
                                        writes into it but deletes nothing (only files of the
                                        same name are replaced)

The folder itself is never removed, and nothing whose name the command does not write is touched.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

MARKER = ".verl-avsd"  # one line: the command that made the folder


class OutputDirError(ValueError):
    """An output folder a command must not use; the message names the folder and what to do."""


def _owned(name: str, owned: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in owned)


def made_by(path: Path) -> str | None:
    """The command named in the folder's marker file, or None."""
    marker = path / MARKER
    return marker.read_text().strip() if marker.is_file() else None


def is_previous_output(path: str | Path, command: str, owned: tuple[str, ...]) -> bool:
    """A folder this command made (its marker), or one holding nothing but entries it writes."""
    path = Path(path)
    entries = [e.name for e in path.iterdir() if e.name != MARKER] if path.is_dir() else []
    return made_by(path) == command or (bool(entries) and all(_owned(name, owned) for name in entries))


def claim_output_dir(path: str | Path, command: str, owned: tuple[str, ...], overwrite: bool = False, keep: bool = False) -> Path:
    """Make `path` ready for `command`, whose outputs are the entries matching the glob patterns in
    `owned`. `keep`: a previous output folder of the command is used as it is (resume); else it is
    refused unless `overwrite`, which removes the command's own entries first. Returns the
    absolute folder."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output {path} is a file, not a folder")
    if not path.exists():
        path.mkdir(parents=True)
        (path / MARKER).write_text(command + "\n")
        return path
    entries = sorted(e.name for e in path.iterdir() if e.name != MARKER)
    foreign = [name for name in entries if not _owned(name, owned)]
    previous = is_previous_output(path, command, owned)
    if not entries:
        (path / MARKER).write_text(command + "\n")
    elif previous and keep:
        pass
    elif previous and overwrite:
        for name in entries:
            if _owned(name, owned):  # only what the command itself writes; anything else stays
                entry = path / name
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (path / MARKER).write_text(command + "\n")
    elif previous:
        raise OutputDirError(
            f"{path} holds a previous output of {command}; choose a new folder, or pass --overwrite to replace it"
        )
    elif not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputDirError(
            f"{path} is not empty and was not made by {command} (it holds {shown}); choose a "
            "new or empty folder, or pass --overwrite to write into it (nothing in it is deleted; files "
            "of the same name are replaced)"
        )
    return path

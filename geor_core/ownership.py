"""Which output folders geor may write into and delete in: each command claims its output first.

A command that writes an output folder (a local path or an s3:// prefix) calls ``claim_output``
before it writes or deletes anything there. The claim:

- refuses an output that is, or contains, one of the run's inputs (the manifest, the images, the
  model, the data), comparing resolved locations (local: realpath; s3: the normalised prefix);
- accepts an absent or empty folder; a folder whose ownership record (``.geor-owner.json``) names
  the same command (or one that shares its folder: a demo root is a pipeline root too); and a
  folder an older geor wrote, recognised by what that command always left there (its completion
  marker, a pipeline stage record, ...) or by the caller's own record of it (``adopt``);
- refuses anything else, naming the folder: a non-empty folder the project did not write, or one
  another command owns;
- writes the record (command, time, inputs) when it is not there yet.

``check_output`` makes the same refusals without writing anything, for checks before a run starts.

It returns an ``OwnedOutput``, through which a command deletes in its output: ``remove`` takes the
names of the entries that command writes, relative to the folder, never the folder itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from geor_core import uris
from geor_core.errors import UserFacingError

RECORD_NAME = ".geor-owner.json"
# Commands that work in one folder together: `geor demo` runs the pipeline in its own root.
_SHARED = (frozenset({"demo", "pipeline"}),)


@dataclass(frozen=True)
class OwnedOutput:
    """An output folder claimed by ``command``: the entries it writes may be deleted."""

    uri: str
    command: str

    def remove(self, *entries: str) -> None:
        """Delete these entries of the folder (paths relative to it; absent ones are no error)."""
        for entry in entries:
            parts = PurePosixPath(entry.strip("/")).parts
            if not parts or ".." in parts or entry.startswith("/") or parts == (RECORD_NAME,):
                raise ValueError(f"{entry!r} is not an entry of {self.uri} that a command may delete")
            uris.remove_tree(uris.join(self.uri, *parts))


def claim_output(
    uri: str,
    command: str,
    *,
    inputs: Mapping[str, str] | None = None,
    legacy: Sequence[str] = (uris.MARKER_NAME,),
    adopt: bool = False,
) -> OwnedOutput:
    """Claim ``uri`` for `geor <command>` (see the module docstring) or raise UserFacingError.

    ``inputs``: the run's inputs by role (``{"model": uri}``; hub ids, ``models:/`` and empty
    values are skipped). ``legacy``: glob patterns, relative to the folder, of what older versions
    of the command left there. ``adopt``: the caller knows the project wrote the folder."""
    inputs = {role: value for role, value in (inputs or {}).items() if value}
    status = _status(uri, command, inputs, legacy, adopt)
    if status != "owned":
        payload = {
            "command": command,
            "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": inputs,
            "written_by_older_geor": status == "older",
        }
        uris.write_text(uris.join(uri, RECORD_NAME), json.dumps(payload, indent=2) + "\n")
    return OwnedOutput(uri, command)


def check_output(
    uri: str,
    command: str,
    *,
    inputs: Mapping[str, str] | None = None,
    legacy: Sequence[str] = (uris.MARKER_NAME,),
) -> None:
    """``claim_output``'s refusals without writing anything: for checks made before a run starts."""
    _status(uri, command, {role: value for role, value in (inputs or {}).items() if value}, legacy, False)


def _status(uri: str, command: str, inputs: Mapping[str, str], legacy: Sequence[str], adopt: bool) -> str:
    """ "owned" (the record names the command), "empty" (absent or empty) or "older" (an older
    geor's, or ``adopt``); UserFacingError for anything else."""
    _refuse_inputs_inside(uri, command, inputs)
    fs, path = uris.filesystem(uri)
    if fs.isfile(path):
        raise UserFacingError(f"output {uri} is a file; `geor {command}` needs a folder there")
    record = _read_record(uri)
    if record is not None:
        owner = str(record.get("command", ""))
        if owner != command and frozenset({owner, command}) not in _SHARED:
            raise UserFacingError(
                f"output {uri} belongs to `geor {owner}` ({uris.join(uri, RECORD_NAME)}); "
                f"`geor {command}` will not write into it: choose another output folder"
            )
        return "owned"
    if not fs.exists(path) or not fs.ls(path, detail=False):
        return "empty"
    if adopt or _left_by_older_geor(uri, legacy):
        return "older"
    raise UserFacingError(
        f"output {uri} is not empty and geor did not write it (it has no {RECORD_NAME}): "
        f"`geor {command}` writes and deletes only in its own folders; choose a new or empty one"
    )


def _read_record(uri: str) -> dict | None:
    record_uri = uris.join(uri, RECORD_NAME)
    try:
        record = json.loads(uris.read_text(record_uri))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserFacingError(f"ownership record {record_uri} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise UserFacingError(f"ownership record {record_uri} is not a JSON object")
    return record


def _left_by_older_geor(uri: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        target = uris.join(uri, pattern)
        if uris.glob(target) if any(c in pattern for c in "*?[") else uris.exists(target):
            return True
    return False


def _location(uri: str) -> tuple[str, tuple[str, ...]] | None:
    """(scheme, path parts) of a local path or s3:// URI, resolved; None for what names no folder
    here (a hub id, ``models:/``, another scheme)."""
    if uris.is_s3(uri):
        return "s3", tuple(part for part in uri.split("://", 1)[1].split("/") if part)
    if "://" in uri and not uri.startswith("file://"):
        return None
    local = uris.absolute(uri.removeprefix("file://"), may_be_hub_id=True)
    if not os.path.isabs(local):
        return None  # a hub id such as owner/name
    return "file", PurePosixPath(os.path.realpath(local)).parts


def _refuse_inputs_inside(uri: str, command: str, inputs: Mapping[str, str]) -> None:
    output = _location(uri)
    if output is None:
        return
    scheme, parts = output
    for role, value in inputs.items():
        found = _location(value)
        if found is None or found[0] != scheme or found[1][: len(parts)] != parts:
            continue
        relation = "is" if found[1] == parts else "contains"
        raise UserFacingError(
            f"output {uri} {relation} the {role} {value}: `geor {command}` would write over its own "
            "input; choose an output folder elsewhere"
        )

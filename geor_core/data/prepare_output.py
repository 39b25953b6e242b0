"""The completion protocol of a `geor prepare` output (Ray-free): check the settings, skip or
refuse a finished output, clear a crashed one, and finish a new one (row check, stats, marker).

A complete output made from the same manifest files and the same row-deciding settings is
skipped; one made from other inputs is an error unless ``prepare.overwrite``. Before a run the
output is claimed (geor_core/ownership.py: a folder geor did not write, or one that holds the
manifest or the images, is refused), then cleared: only the entries a run writes
(``dataset.OUTPUT_ENTRIES`` and the marker, the marker first), never anything else in the
folder. The marker is written last, and only when rows_in = rows_out + rows_rejected holds for
what is on disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from geor_core import uris
from geor_core.config import PrepareConfig
from geor_core.data.dataset import OUTPUT_ENTRIES, STATS_FILE
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output

# Settings that do not change which rows come out, or what they say: left out of the fingerprint.
_LAYOUT_ONLY_KEYS = ("output", "overwrite", "batch_size", "cpus_per_task", "compute")


def check_settings(prepare: PrepareConfig) -> None:
    """UserFacingError for settings that cannot work, naming the key and the value."""
    if not prepare.manifest:
        raise UserFacingError("no manifest: pass --manifest URI (or prepare.manifest=URI)")
    if not prepare.output:
        raise UserFacingError("no output: pass --output URI (or prepare.output=URI)")
    bad_codes = [
        c for c in prepare.holdout_countries if not (isinstance(c, str) and len(c) == 2 and c.isupper())
    ]
    if bad_codes:
        raise UserFacingError(
            f"prepare.holdout_countries: got {bad_codes!r}, expected ISO alpha-2 codes such as 'DE'"
        )
    if prepare.holdout_countries and "test" not in prepare.splits:
        raise UserFacingError(
            f"prepare.holdout_countries sends rows to the 'test' split, but prepare.splits has "
            f"only {sorted(prepare.splits)}"
        )
    manifest_dir = uris.filesystem(prepare.manifest)[1].rstrip("/") + "/"
    output_dir = uris.filesystem(prepare.output)[1].rstrip("/") + "/"
    if uris.is_s3(prepare.manifest) == uris.is_s3(prepare.output) and output_dir.startswith(manifest_dir):
        raise UserFacingError(
            f"--output {prepare.output} is inside the manifest {prepare.manifest}; its Parquet files "
            "would be read as manifest files next time: choose an output elsewhere"
        )


def content_fingerprint(prepare: PrepareConfig) -> str:
    """A hash of the settings that decide the output rows (not where or how fast they are written)."""
    settings = {k: v for k, v in asdict(prepare).items() if k not in _LAYOUT_ONLY_KEYS}
    if not settings["group_col"]:  # unset, it hashes as before the key existed: older outputs stay valid
        del settings["group_col"]
    if not uris.is_s3(prepare.manifest):
        settings["manifest"] = uris.filesystem(prepare.manifest)[1]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finished_stats(prepare: PrepareConfig, manifest_fingerprint: str) -> dict[str, Any] | None:
    """The stats of a complete output made from the same inputs (then the run is skipped); None
    when there is no complete output or ``prepare.overwrite``; UserFacingError when the complete
    output was made from other inputs."""
    marker = uris.read_marker(prepare.output)
    if marker is None or prepare.overwrite:
        return None
    differs = [
        what
        for what, key, expected in (
            ("manifest files", "manifest_fingerprint", manifest_fingerprint),
            ("prepare settings", "config_fingerprint", content_fingerprint(prepare)),
        )
        if marker.get(key) != expected
    ]
    if differs:
        raise UserFacingError(
            f"{prepare.output} is already a complete output made from other {' and '.join(differs)} "
            f"(manifest {marker.get('manifest')!r}); pass --overwrite to replace it, or choose another --output"
        )
    return marker["stats"]


def clear_output(prepare: PrepareConfig) -> None:
    """Claim the output for `geor prepare` (geor_core/ownership.py: refused when it is not geor's or
    holds the manifest or the images), then remove the marker first (a crash mid-way never leaves
    an old marker over new files) and every entry a run writes; nothing else is touched."""
    inputs = {"manifest": prepare.manifest, "images root": prepare.images_root}
    owned = claim_output(prepare.output, "prepare", inputs=inputs)
    owned.remove(uris.MARKER_NAME, *OUTPUT_ENTRIES)


def finish_output(prepare: PrepareConfig, stats: dict[str, Any], manifest_fingerprint: str) -> None:
    """Check rows_in = rows_out + rows_rejected, then write ``stats.json`` and, last, the marker."""
    if stats["rows_in"] != stats["rows_out"] + stats["rows_rejected"]:
        raise RuntimeError(
            f"rows_in {stats['rows_in']} != rows_out {stats['rows_out']} + rows_rejected "
            f"{stats['rows_rejected']}: rows were lost or doubled; the output is left incomplete"
        )
    uris.write_text(uris.join(prepare.output, STATS_FILE), json.dumps(stats, indent=2) + "\n")
    marker = {
        "stage": "prepare",
        "stats": stats,
        "config_fingerprint": content_fingerprint(prepare),
        "manifest_fingerprint": manifest_fingerprint,
        "manifest": prepare.manifest,
    }
    uris.write_marker(prepare.output, marker)

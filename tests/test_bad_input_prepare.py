"""Hostile and broken manifest values in `geor prepare` and `geor predict` (no Ray): image
references stay inside the manifest's folder or the images root and allowed schemes, nothing else
is opened, and a bad value is a reject of its row, never a failed job or a silently wrong row."""

from __future__ import annotations

import builtins
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geor_core.config import ConfigError, load_config
from geor_core.data.cor_rows import RowRules, prepare_batch
from geor_core.data.dataset import read_rejects
from geor_core.data.image_refs import reference_rule
from geor_core.data.manifest import ColumnRoles, iter_batches, list_manifest_files
from geor_core.data.photo_inputs import list_photos
from geor_core.data.prepare_blocks import FileContext, PrepareJob, read_raw_blocks, transform_block
from geor_core.errors import UserFacingError

GOOD_JPEG = sorted((Path(__file__).parent / "fixtures" / "streetscapes" / "images").glob("*.jpg"))[0]
ROLES = ColumnRoles(id="id", image="image", lat="lat", lon="lon")
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
STUTTGART = ("48.7758", "9.1829")


class _Probe(http.server.BaseHTTPRequestHandler):
    """Serves the good JPEG at /probe.jpg, 404 elsewhere; records every request's path."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = GOOD_JPEG.read_bytes() if self.path == "/probe.jpg" else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    port = server.server_address[1]
    server.server_close()
    return port


def _rows(references: list[str]) -> pa.Table:
    n = len(references)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "image": references,
            "lat": [STUTTGART[0]] * n,
            "lon": [STUTTGART[1]] * n,
        }
    )


def _rules(check_images: bool) -> RowRules:
    return RowRules(0, SPLITS, frozenset(), check_images, "fp")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """``photos/`` (the manifest's folder) with good.jpg and two symlinks, next to ``secret/``."""
    root, secret = tmp_path / "photos", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    secret.mkdir()
    shutil.copy(GOOD_JPEG, root / "good.jpg")
    shutil.copy(GOOD_JPEG, secret / "x.jpg")
    (root / "leak.jpg").symlink_to(secret / "x.jpg")  # inside the root, pointing out of it
    (root / "sub" / "alias.jpg").symlink_to(root / "good.jpg")  # pointing inside: fine
    (root / "outdir").symlink_to(secret)  # a folder pointing out
    return root


def test_references_outside_the_rule_are_rejected_and_never_touched(photos, probe, monkeypatch):
    secret = photos.parent / "secret"
    url = f"http://127.0.0.1:{probe.server_address[1]}/probe.jpg"
    cases = {
        "good.jpg": "",
        "./sub/../good.jpg": "",
        "sub/alias.jpg": "",
        str(photos / "good.jpg"): "",
        f"file://{photos / 'good.jpg'}": "",
        url: "image_scheme_not_allowed",
        "ftp://127.0.0.1:9/x.jpg": "image_scheme_not_allowed",
        "../secret/x.jpg": "image_outside_root",
        "../secret/not-there.jpg": "image_outside_root",  # same answer: existence never shows
        str(secret / "x.jpg"): "image_outside_root",
        "/etc/passwd": "image_outside_root",
        "file:///etc/passwd": "image_outside_root",
        "leak.jpg": "image_outside_root",
        "outdir/x.jpg": "image_outside_root",
        "file://etc/passwd": "image_path_invalid",
        "bad\x00name.jpg": "image_path_invalid",
        "line\nbreak.jpg": "image_path_invalid",
    }
    touched: list[str] = []

    def watch(function):
        def watched(path, *args, **kwargs):
            touched.append(os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path))
            return function(path, *args, **kwargs)

        return watched

    for module, name in ((os, "stat"), (os, "lstat"), (os, "scandir"), (os, "open"), (builtins, "open")):
        monkeypatch.setattr(module, name, watch(getattr(module, name)))
    images = reference_rule(["file", "s3"], str(photos), [str(photos)])
    kept, reason = prepare_batch(_rows(list(cases)), ROLES, images, _rules(check_images=True))
    monkeypatch.undo()
    assert dict(zip(cases, reason.tolist(), strict=True)) == cases
    assert probe.paths == []  # no request was sent
    assert not [p for p in touched if "secret" in p.split("/") and "photos" not in p.split("/")]
    assert not [p for p in touched if p.startswith("/etc")]
    expected = (
        [str(photos / "good.jpg")] * 2 + [str(photos / "sub" / "alias.jpg")] + [str(photos / "good.jpg")] * 2
    )
    assert kept["image"].to_pylist() == expected


def test_listed_schemes_are_read_and_a_failed_remote_read_rejects_only_its_row(photos, probe):
    port = probe.server_address[1]
    refs = [
        f"http://127.0.0.1:{port}/probe.jpg",
        f"http://127.0.0.1:{port}/gone.jpg",
        f"http://127.0.0.1:{_closed_port()}/x.jpg",
        f"ftp://127.0.0.1:{_closed_port()}/x.jpg",
        "good.jpg",
    ]
    images = reference_rule(["file", "http", "ftp"], str(photos), [str(photos)])
    kept, reason = prepare_batch(_rows(refs), ROLES, images, _rules(check_images=True))
    assert reason.tolist() == ["", "image_missing", "image_unreadable", "image_unreadable", ""]
    assert kept["image"].to_pylist() == [refs[0], str(photos / "good.jpg")]
    assert sorted(probe.paths) == ["/gone.jpg", "/probe.jpg"]


def test_images_root_is_the_other_allowed_folder(photos, tmp_path):
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    shutil.copy(GOOD_JPEG, elsewhere / "a.jpg")
    refs = [
        "a.jpg",
        str(elsewhere / "a.jpg"),
        str(photos / "good.jpg"),
        "../photos/good.jpg",
        "../secret/x.jpg",
    ]
    images = reference_rule(["file"], str(elsewhere), [str(photos), str(elsewhere)])
    kept, reason = prepare_batch(_rows(refs), ROLES, images, _rules(check_images=True))
    assert reason.tolist() == ["", "", "", "", "image_outside_root"]  # ../photos is the other root
    images = reference_rule(["s3"], str(elsewhere), [str(elsewhere)])  # no local paths at all
    assert prepare_batch(_rows(refs[:1]), ROLES, images, _rules(False))[1].tolist() == [
        "image_scheme_not_allowed"
    ]


def test_allowed_schemes_is_a_config_list_of_scheme_names():
    assert load_config(None).prepare.allowed_schemes == ["file", "s3"]
    assert (
        load_config(None, ["prepare.allowed_schemes=[file,s3,https]"]).prepare.allowed_schemes[-1] == "https"
    )
    with pytest.raises(ConfigError, match="prepare.allowed_schemes"):
        reference_rule(["file", "not a scheme"], "/m", ["/m"])


def _read(path: Path, batch_rows: int = 1000) -> tuple[list[dict], list[tuple[str, str]]]:
    [file] = list_manifest_files(str(path))
    batches = list(iter_batches(file, batch_rows))
    rows = [row for b in batches for row in b.table.to_pylist()]
    return rows, [(line.text, line.reason) for b in batches for line in b.bad_lines]


def test_a_column_named_twice_is_an_error_naming_it(tmp_path):
    (tmp_path / "m.csv").write_text("id,lat,lat,lon\na,1,2,3\n")
    with pytest.raises(UserFacingError, match="m.csv has the column 'lat' more than once"):
        _read(tmp_path / "m.csv")
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["1"]), pa.array(["2"])], names=["id", "lat", "lat"]),
                   tmp_path / "m.parquet")  # fmt: skip
    with pytest.raises(UserFacingError, match="column 'lat' more than once"):
        _read(tmp_path / "m.parquet")


def _job(tmp_path: Path, path: Path, columns: tuple[str, ...]) -> tuple[PrepareJob, list]:
    [file] = list_manifest_files(str(path))
    images = reference_rule(["file"], file.folder, [file.folder])
    job = PrepareJob(
        (FileContext(file.uri, ROLES, images),), _rules(False), str(tmp_path / "rejects"), columns
    )
    return job, list(read_raw_blocks(file, 1000, np.zeros(0, np.int64)))


def test_a_value_that_is_not_utf8_rejects_its_row_only(tmp_path):
    images = pa.array([b"a.jpg", b"b\xff.jpg", b"c.jpg"], pa.binary())
    table = pa.table(
        {"id": ["a", "b", "c"], "image": images, "lat": STUTTGART[:1] * 3, "lon": STUTTGART[1:] * 3}
    )
    pq.write_table(table, tmp_path / "m.parquet")
    job, blocks = _job(tmp_path, tmp_path / "m.parquet", ("id", "image", "lat", "lon"))
    kept = pa.concat_tables([transform_block(block, job) for block in blocks])
    assert kept["image"].to_pylist() == [str(tmp_path / "a.jpg"), str(tmp_path / "c.jpg")]
    rejects = read_rejects(str(tmp_path)).to_pylist()
    assert [(r["reason"], r["line"]) for r in rejects] == [
        ("not_utf8", '{"id": "b", "image": "b\ufffd.jpg", "lat": "48.7758", "lon": "9.1829"}')
    ]
    (tmp_path / "m.csv").write_bytes(b"id,image,lat,lon\na,a.jpg,1,2\nb,b\xff.jpg,1,2\nc,c.jpg,1,2\n")
    rows, bad = _read(tmp_path / "m.csv")
    assert [r["image"] for r in rows] == ["a.jpg", "c.jpg"] and bad == [("b,b\ufffd.jpg,1,2", "not_utf8")]
    (tmp_path / "m.jsonl").write_bytes(b'{"id": "a"}\n{"id": "b\xff"}\n{"id": "c"}\n')
    rows, bad = _read(tmp_path / "m.jsonl")
    assert [r["id"] for r in rows] == ["a", "c"] and bad == [('{"id": "b\ufffd"}', "not_utf8")]


def test_jsonl_ids_are_text_exactly_as_written(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"id": 1e400, "lat": 1E5}\n{"id": 1.0, "lat": -0}\n{"id": "007", "lat": 0.10}\n'
        '{"id": 123456789012345678901234567890, "lat": NaN}\n{"id": 007}\n'
    )
    rows, bad = _read(tmp_path / "m.jsonl")
    assert [(r["id"], r["lat"]) for r in rows] == [
        ("1e400", "1E5"), ("1.0", "-0"), ("007", "0.10"), ("123456789012345678901234567890", "NaN")
    ]  # fmt: skip
    assert bad == [('{"id": 007}', "malformed_line")]  # a bare 007 is not JSON


def test_a_huge_field_is_one_reject_and_the_job_goes_on(tmp_path):
    huge = "x" * (20 << 20)
    (tmp_path / "m.csv").write_text(
        f"id,image,lat,lon\na,a.jpg,1,2\nb,{huge}.jpg,1,2\nc,c.jpg,1,2\n{huge},d.jpg,1,2\ne,e.jpg,1,2\n"
    )
    job, blocks = _job(tmp_path, tmp_path / "m.csv", ("id", "image", "lat", "lon"))
    rows_in = sum(block.num_rows for block in blocks)
    kept = pa.concat_tables([transform_block(block, job) for block in blocks])
    rejects = read_rejects(str(tmp_path))
    assert kept["id"].to_pylist() == ["a", "c", "e"]
    assert rejects["reason"].to_pylist() == ["field_too_large"] * 2
    assert all(
        len(line) < 2000 and f"{(20 << 20) + 10} bytes" in line for line in rejects["line"].to_pylist()
    )
    assert rows_in == 5 == kept.num_rows + rejects.num_rows


def test_predict_inputs_follow_the_same_rule(photos, probe, tmp_path):
    url = f"http://127.0.0.1:{probe.server_address[1]}/probe.jpg"
    for reference, reason in (("../secret/x.jpg", "image_outside_root"), (url, "image_scheme_not_allowed"),
                              ("leak.jpg", "image_outside_root"), ("bad\x00.jpg", "image_path_invalid")):  # fmt: skip
        (photos / "m.csv").write_text(f"id,image\nok,good.jpg\nbad,{reference}\n")
        with pytest.raises(
            UserFacingError, match=f"1 image references break the reference rule, e.g. row 1 .*{reason}"
        ):
            list_photos(str(photos / "m.csv"))
    assert probe.paths == []
    (photos / "m.csv").write_text(f"id,image\nok,good.jpg\nweb,{url}\nstore,../secret/x.jpg\n")
    listed = list_photos(
        str(photos / "m.csv"), allowed_schemes=["file", "http"], images_root=str(tmp_path / "secret")
    )
    assert listed.column("image").to_pylist() == [
        str(photos / "good.jpg"),
        url,
        str(tmp_path / "secret" / "x.jpg"),
    ]
    (photos / "m.csv").unlink()
    with pytest.raises(
        UserFacingError, match=r"--images .*1 image references.*'leak.jpg' \(image_outside_root\)"
    ):
        list_photos(str(photos))  # leak.jpg points out of the folder
    (photos / "leak.jpg").unlink()
    (photos / "outdir").unlink()
    assert list_photos(str(photos)).column("id").to_pylist() == ["good.jpg", "sub/alias.jpg"]

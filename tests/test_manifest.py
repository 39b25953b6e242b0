"""The Ray-free parts of `geor prepare`: manifest reading, dedupe, per-batch rows, splits, image checks."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geor_core.config import load_config
from geor_core.data.cor_rows import (
    DUPLICATE_ID,
    MISSING_ID,
    MISSING_IMAGE,
    OUTPUT_SCHEMA,
    RowRules,
    assign_splits,
    prepare_batch,
)
from geor_core.data.dataset import head_prepared, read_prepared, read_rejects, require_prepared
from geor_core.data.dedupe import candidate_rows, duplicate_rows, hash_ids
from geor_core.data.image_check import IMAGE_MISSING, IMAGE_UNDECODABLE, check_images
from geor_core.data.image_refs import reference_rule, resolve_references
from geor_core.data.manifest import ColumnRoles, iter_batches, list_manifest_files, resolve_columns
from geor_core.data.prepare_blocks import FileContext, PrepareJob, read_raw_blocks, transform_block
from geor_core.data.prepare_output import check_settings
from geor_core.errors import UserFacingError
from geor_core.geo.parse import parse_many

FIXTURES = Path(__file__).parent / "fixtures"
STREET_IMAGES = FIXTURES / "streetscapes" / "images"
ROLES = ColumnRoles(id="id", image="image", lat="lat", lon="lon")
RULES = RowRules(
    seed=0,
    splits=(("train", 0.8), ("val", 0.1), ("test", 0.1)),
    holdout_countries=frozenset(),
    check_images=False,
    source_fingerprint="fp",
)


def _read_all(path: Path, batch_rows: int = 1000) -> tuple[pa.Table, list[str]]:
    [file] = list_manifest_files(str(path))
    batches = list(iter_batches(file, batch_rows))
    tables = [b.table for b in batches if b.table.num_rows]
    table = pa.concat_tables(tables) if tables else batches[0].table
    return table, [line for b in batches for line in b.malformed]


def test_csv_reads_every_cell_as_text_and_keeps_malformed_lines(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        '\ufeffid,lat,lon,note\n1,1.5,2.5,"Rome, Italy"\n2,3,4\n3,5,6,x,extra\n'
        '4,,7,"two\nlines"\n5,abc,8,z\n',
        encoding="utf-8",
    )
    table, malformed = _read_all(path)
    assert table.column_names == ["id", "lat", "lon", "note"]  # BOM gone from the first name
    assert all(pa.types.is_string(t) for t in table.schema.types)
    assert table.to_pydict() == {
        "id": ["1", "4", "5"],
        "lat": ["1.5", "", "abc"],
        "lon": ["2.5", "7", "8"],
        "note": ["Rome, Italy", "two\nlines", "z"],
    }
    assert malformed == ["2,3,4", "3,5,6,x,extra"]


def test_batches_cover_every_row_once_in_order(tmp_path):
    path = tmp_path / "m.csv.gz"
    rows = "\n".join(f"{i},{i % 80},{i % 170}" for i in range(2500))
    path.write_bytes(gzip.compress(f"id,lat,lon\n{rows}\n".encode()))
    [file] = list_manifest_files(str(path))
    batches = list(iter_batches(file, 1000))
    assert [b.first_row for b in batches] == [0, 1000, 2000]
    ids = [i for b in batches for i in b.table["id"].to_pylist()]
    assert ids == [str(i) for i in range(2500)]


def test_jsonl_values_become_text_and_bad_lines_are_malformed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '\ufeff{"id": 7, "lat": 1.5, "lon": "2"}\nnot json\n[1, 2]\n\n'
        '{"id": "x", "lat": null, "tags": {"a": 1}}\n',
        encoding="utf-8",
    )
    table, malformed = _read_all(path)
    assert table.to_pydict() == {
        "id": ["7", "x"],
        "lat": ["1.5", None],
        "lon": ["2", None],
        "tags": [None, '{"a": 1}'],
    }
    assert malformed == ["not json", "[1, 2]"]


def test_parquet_columns_become_text(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": [1, 2], "lat": [1.5, float("nan")], "lon": [None, 3.25]}), path)
    table, malformed = _read_all(path)
    assert table.to_pydict() == {"id": ["1", "2"], "lat": ["1.5", "nan"], "lon": [None, "3.25"]}
    assert malformed == []


def test_a_folder_lists_its_manifest_files_in_order_and_skips_hidden_ones(tmp_path):
    for name in (
        "b.csv",
        "a/z.jsonl",
        "a/y.parquet.txt",
        ".hidden.csv",
        "_tmp/x.csv",
        "c.TSV",
        "notes/y.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("id,lat,lon\n")
    files = list_manifest_files(str(tmp_path))
    assert [Path(f.uri).relative_to(tmp_path).as_posix() for f in files] == ["a/z.jsonl", "b.csv", "c.TSV"]
    assert [f.index for f in files] == [0, 1, 2]
    assert [f.format for f in files] == ["jsonl", "csv", "tsv"]
    assert files[0].folder == str(tmp_path / "a")
    with pytest.raises(UserFacingError, match="does not exist"):
        list_manifest_files(str(tmp_path / "nope.csv"))
    with pytest.raises(UserFacingError, match="has no"):
        list_manifest_files(str(tmp_path / "notes"))


def test_column_roles_follow_the_config_and_name_what_is_missing():
    assert resolve_columns(["image", "LAT", "Lon"], "id", "image", "lat", "lon", "m.csv") == ColumnRoles(
        id=None, image="image", lat="LAT", lon="Lon"
    )
    assert resolve_columns(["name", "lon", "lat"], "name", "image", "lat", "lon", "m.csv").image is None
    with pytest.raises(
        UserFacingError, match=r"m\.csv has no column --lat-col 'latitude'.*its columns: a, lon"
    ):
        resolve_columns(["a", "lon"], "a", "image", "latitude", "lon", "m.csv")
    with pytest.raises(UserFacingError, match="--id-col 'id' or --image-col 'image'"):
        resolve_columns(["lat", "lon"], "id", "image", "lat", "lon", "m.csv")


def test_a_group_column_is_copied_into_each_kept_row_and_a_missing_one_is_named():
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "image": ["a.jpg", "b.jpg", "c.jpg"],
            "lat": ["48.7758", "x", "-33.8688"],
            "lon": ["9.1829", "1", "151.2093"],
            "Kind": [" clean ", "ambiguous", None],
        }
    )
    images = reference_rule(["file"], "/photos", ["/photos"])
    roles = resolve_columns(table.column_names, "id", "image", "lat", "lon", "m.csv", group_col="kind")
    assert roles.group == "Kind"
    rows, reason = prepare_batch(table, roles, images, RULES)
    assert reason.tolist() == ["", "non_numeric_lat", ""] and rows["group"].to_pylist() == ["clean", ""]
    without, _ = prepare_batch(table, ROLES, images, RULES)
    assert without["group"].to_pylist() == ["", ""] and without.schema == OUTPUT_SCHEMA
    with pytest.raises(UserFacingError, match=r"m\.csv has no column prepare.group_col 'world_group'"):
        resolve_columns(["id", "lat", "lon"], "id", "image", "lat", "lon", "m.csv", group_col="world_group")


def test_the_first_row_of_an_id_in_manifest_order_is_kept():
    files = [pa.array(["a", "b", "a", None]), pa.array(["c", "b", "", "a"])]
    hashed = [hash_ids(ids) for ids in files]
    candidates = candidate_rows([h for h, _ in hashed], [p for _, p in hashed])
    assert {k: v.tolist() for k, v in candidates.items()} == {0: [0, 1, 2], 1: [1, 3]}
    ids = {k: (rows, files[k].take(pa.array(rows)).to_pylist()) for k, rows in candidates.items()}
    assert {k: v.tolist() for k, v in duplicate_rows(ids).items()} == {0: [2], 1: [1, 3]}


def test_a_hash_collision_never_rejects_a_row():
    colliding = [np.array([7, 7, 7], np.uint64)]  # three different ids that hash alike
    candidates = candidate_rows(colliding, [np.ones(3, bool)])
    assert candidates[0].tolist() == [0, 1, 2]
    assert duplicate_rows({0: (candidates[0], ["x", "y", "x"])})[0].tolist() == [2]
    assert duplicate_rows({0: (candidates[0], ["x", "y", "z"])}) == {}


def _batch(rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table({name: pa.array(list(values), pa.string()) for name, values in zip(("id", "image", "lat", "lon"), columns, strict=True)})  # fmt: skip


def test_each_row_gets_the_first_reason_that_applies_and_good_rows_their_cor_target():
    table = _batch(
        [
            (" p1 ", "a.jpg", "48.7758", "9.1829"),  # Stuttgart
            ("", "b.jpg", "abc", "1"),  # no id beats a bad latitude
            ("p3", "c.jpg", "1", "2"),  # flagged duplicate below
            ("p4", "  ", "1", "2"),
            ("p5", "e.jpg", "nan", "2"),
            ("p6", "f.jpg", "0", "0"),
            ("p7", "s3://other/g.jpg", "-33.8688", "151.2093"),  # Sydney
        ]
    )
    duplicate = np.array([False, False, True, False, False, False, False])
    images = reference_rule(["file", "s3"], "s3://bucket/photos", [])
    rows, reason = prepare_batch(table, ROLES, images, RULES, duplicate)
    assert reason.tolist() == ["", MISSING_ID, DUPLICATE_ID, MISSING_IMAGE, "nan_lat", "null_island", ""]
    assert rows.schema == OUTPUT_SCHEMA
    assert rows["id"].to_pylist() == ["p1", "p7"]
    assert rows["image"].to_pylist() == ["s3://bucket/photos/a.jpg", "s3://other/g.jpg"]
    assert rows["country_code"].to_pylist() == ["DE", "AU"]
    assert rows["state"].to_pylist() == ["Baden-Wuerttemberg", "New South Wales"]
    assert all(km < 25 for km in rows["settlement_km"].to_pylist())
    parsed = parse_many(rows["target"].to_pylist())
    assert parsed.chain_ok.all() and parsed.format_ok.all()
    assert parsed.country == ["Germany", "Australia"]
    np.testing.assert_allclose(parsed.lat, [48.7758, -33.8688], atol=1e-6)
    np.testing.assert_allclose(parsed.lon, [9.1829, 151.2093], atol=1e-6)


def test_coordinates_read_by_one_cast_equal_those_parsed_cell_by_cell():
    """A block whose coordinates are all numbers is read by one Arrow cast; a block with one bad
    cell is parsed cell by cell. Both give every good row the same float (Python's own reading)."""
    rng = np.random.default_rng(7)
    lat, lon = rng.uniform(-60, 70, 200), rng.uniform(-179, 179, 200)
    texts = [(repr(float(a)), f"{b:.6f}") for a, b in zip(lat, lon, strict=True)]
    texts[:3] = [("+12.5", "1e1"), (".5", "7."), ("-0.25E+1", "100")]
    rows = [(f"p{i}", f"{i}.jpg", a, b) for i, (a, b) in enumerate(texts)]
    images = reference_rule(["file"], "/photos", ["/photos"])
    clean, clean_reason = prepare_batch(_batch(rows), ROLES, images, RULES)
    mixed, mixed_reason = prepare_batch(_batch([*rows, ("bad", "x.jpg", "12,5", "3")]), ROLES, images, RULES)
    assert (clean_reason == "").all() and mixed_reason.tolist() == [*[""] * 200, "non_numeric_lat"]
    assert clean.equals(mixed)
    assert clean["lat"].to_pylist() == [float(a) for a, _ in texts]
    assert clean["lon"].to_pylist() == [float(b) for _, b in texts]


def test_image_references_resolve_against_the_base_unless_absolute():
    refs = pa.array(["a/b.jpg", "./c.jpg", "/data/m/x/d.jpg", "s3://b/e.jpg", "https://h/f.jpg"])
    uris, reasons = resolve_references(refs, reference_rule(["file", "s3"], "/data/m/", ["/data/m"]))
    assert uris.to_pylist() == ["/data/m/a/b.jpg", "/data/m/c.jpg", "/data/m/x/d.jpg", "s3://b/e.jpg", ""]
    assert reasons.tolist() == ["", "", "", "", "image_scheme_not_allowed"]


def test_splits_are_stable_when_rows_are_added_and_follow_the_shares():
    ids = pa.array([f"photo-{i}" for i in range(20_000)])
    codes = np.full(len(ids), "FR", dtype=object)
    first = assign_splits(ids.slice(0, 5_000), codes[:5_000], RULES).to_pylist()
    everything = assign_splits(ids, codes, RULES).to_pylist()
    assert everything[:5_000] == first
    shares = {name: everything.count(name) / len(everything) for name in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.015)
    other_seed = assign_splits(ids, codes, RowRules(1, RULES.splits, frozenset(), False, "fp")).to_pylist()
    assert sum(a != b for a, b in zip(everything, other_seed, strict=True)) > 2_000


def test_holdout_countries_go_wholly_to_test():
    ids = pa.array([f"photo-{i}" for i in range(2_000)])
    codes = np.array(["NZ", "FR"] * 1_000, dtype=object)
    rules = RowRules(0, RULES.splits, frozenset({"NZ"}), False, "fp")
    split = np.array(assign_splits(ids, codes, rules).to_pylist(), dtype=object)
    assert set(split[codes == "NZ"]) == {"test"}
    assert set(split[codes == "FR"]) == {"train", "val", "test"}


def test_image_checks_tell_missing_from_undecodable(tmp_path):
    good = sorted(STREET_IMAGES.glob("*.jpg"))[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    reasons = check_images(
        [str(good), str(corrupt), str(truncated), str(tmp_path / "gone.jpg"), str(tmp_path)]
    )
    assert reasons == ["", IMAGE_UNDECODABLE, IMAGE_UNDECODABLE, IMAGE_MISSING, IMAGE_MISSING]


def _job(tmp_path: Path, files, columns=("id", "image", "lat", "lon", "reason")) -> PrepareJob:
    contexts = tuple(FileContext(f.uri, ROLES, reference_rule(["file"], f.folder, [f.folder])) for f in files)
    return PrepareJob(contexts, RULES, str(tmp_path / "out" / "rejects"), tuple(columns))


def test_blocks_split_anywhere_write_every_reject_once(tmp_path):
    manifest = tmp_path / "m.csv"
    lines = ["id,image,lat,lon,reason"] + [f"p{i},p{i}.jpg,{10 + i % 50},{i % 100},r{i}" for i in range(300)]
    lines[5] = "p4,x.jpg,,1,r"  # missing latitude
    lines[100] = "broken,line"
    lines[200] = "p3,p3.jpg,1,2,r"  # p3 again: well-formed row 198 (the malformed line has no row)
    manifest.write_text("\n".join(lines) + "\n")
    [file] = list_manifest_files(str(manifest))
    [block] = list(read_raw_blocks(file, 10_000, np.array([198], np.int64)))
    assert block.num_rows == 300
    job = _job(tmp_path, [file])
    kept = [transform_block(block.slice(start, 70), job) for start in range(0, 300, 70)]  # as Ray may slice
    assert sum(t.num_rows for t in kept) == 297
    rejects = read_rejects(str(tmp_path / "out")).sort_by("reason")
    assert rejects["reason"].to_pylist() == ["duplicate_id", "malformed_line", "missing_lat"]
    assert rejects["line"].to_pylist() == [None, "broken,line", None]
    assert rejects["source_row"].to_pylist() == [198, None, 4]  # among well-formed rows
    assert rejects["manifest_reason"].to_pylist() == ["r", None, "r"]  # the manifest's own column kept
    assert set(rejects["source_file"].to_pylist()) == {str(manifest)}


def test_a_prepared_output_is_read_only_when_complete(tmp_path):
    with pytest.raises(UserFacingError, match="not a complete `geor prepare` output"):
        require_prepared(str(tmp_path))
    (tmp_path / "data").mkdir()
    rows = OUTPUT_SCHEMA.empty_table()
    pq.write_table(rows, tmp_path / "data" / "part.parquet")
    (tmp_path / "_SUCCESS.json").write_text(json.dumps({"stage": "prepare"}))
    assert read_prepared(str(tmp_path), "train").schema == OUTPUT_SCHEMA
    shutil.rmtree(tmp_path / "data")
    assert read_prepared(str(tmp_path)).num_rows == 0  # no shard at all (everything rejected)


def test_a_val_subset_is_the_splits_first_rows_read_no_further_than_needed(tmp_path):
    n = 600
    values = {f.name: [0.0] * n if pa.types.is_floating(f.type) else [""] * n for f in OUTPUT_SCHEMA}
    values["id"] = [f"r{i:04d}" for i in range(n)]
    values["split"] = ["val" if i % 3 == 0 else "train" for i in range(n)]
    rows = pa.table(values, schema=OUTPUT_SCHEMA)
    (tmp_path / "data").mkdir()
    for part in range(3):  # 67 val rows in the first file
        pq.write_table(
            rows.slice(part * 200, 200), tmp_path / "data" / f"part-{part}.parquet", row_group_size=40
        )
    (tmp_path / "_SUCCESS.json").write_text(json.dumps({"stage": "prepare"}))
    uri = str(tmp_path)
    whole = read_prepared(uri, "val", ["id"])
    for count in (0, 1, 67, 68, 200, 10_000):
        assert head_prepared(uri, "val", ["id"], count, batch_rows=16).equals(whole.slice(0, count))
    (tmp_path / "data" / "part-2.parquet").write_bytes(b"not parquet")  # two files past the rows asked for
    assert head_prepared(uri, "val", ["id"], 50, batch_rows=16).equals(whole.slice(0, 50))
    with pytest.raises(pa.ArrowInvalid):
        read_prepared(uri, "val", ["id"])


def test_settings_that_cannot_work_are_refused_before_anything_runs(tmp_path):
    def settings(**values):
        return load_config(None, [f"prepare.{k}={v}" for k, v in values.items()]).prepare

    manifest, output = str(tmp_path / "m"), str(tmp_path / "out")
    check_settings(settings(manifest=manifest, output=output, holdout_countries="[NZ]"))
    with pytest.raises(UserFacingError, match="inside the manifest"):
        check_settings(settings(manifest=manifest, output=f"{manifest}/prepared"))
    with pytest.raises(UserFacingError, match="only \\['train', 'val'\\]"):
        check_settings(settings(manifest=manifest, output=output, holdout_countries="[NZ]",
                                splits="{train: 0.9, val: 0.1}"))  # fmt: skip


def test_tsv_splits_on_tabs(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("id\tlat\tlon\tnote\nA\t1.5\t2\ta, b\n")
    table, malformed = _read_all(path)
    assert table.to_pydict() == {"id": ["A"], "lat": ["1.5"], "lon": ["2"], "note": ["a, b"]}
    assert malformed == []

"""Tests of LUNA16 CSV parsing, candidate/annotation matching and series splits."""

import pytest

from medjax import errors
from medjax.data.luna import csvs


def _write(path, text):
    path.write_text(text)
    return path


def test_parse_annotations_and_candidates(tmp_path):
    ann = _write(
        tmp_path / "a.csv",
        "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\n"
        "s1,1.5,-2,3,6.0,True\ns2,0,0,0,-1,no\n",
    )
    rows = csvs.read_annotations(ann)
    assert rows[0] == csvs.Annotation("s1", (1.5, -2.0, 3.0), 6.0, True)
    assert rows[1].malignancy is False and rows[1].diameter_mm == -1.0
    cand = _write(
        tmp_path / "c.csv", "seriesuid,coordX,coordY,coordZ,class\ns1,1,2,3,1\ns1,4,5,6,0\n"
    )
    assert [c.label for c in csvs.read_candidates(cand)] == [1, 0]


@pytest.mark.parametrize(
    "text, match",
    [
        ("seriesuid,coordX,coordY,diameter_mm\ns,1,2,3\n", r"a\.csv:1: .*coordZ"),
        (
            "seriesuid,coordX,coordY,coordZ,diameter_mm\ns,1,2,3,4\ns,1,x,3,4\n",
            r"a\.csv:3: .*coordY",
        ),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n,1,2,3,4\n", r"a\.csv:2: empty seriesuid"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\ns,1,2,nan,4\n", r"a\.csv:2: .*not finite"),
        (
            "seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy\ns,1,2,3,4,maybe\n",
            r"a\.csv:2: .*malignancy",
        ),
    ],
)
def test_bad_annotation_rows_name_file_and_line(tmp_path, text, match):
    with pytest.raises(errors.DataError, match=match):
        csvs.read_annotations(_write(tmp_path / "a.csv", text))


def test_bad_candidate_class(tmp_path):
    path = _write(tmp_path / "c.csv", "seriesuid,coordX,coordY,coordZ,class\ns,1,2,3,2\n")
    with pytest.raises(errors.DataError, match=r"c\.csv:2: column 'class'"):
        csvs.read_candidates(path)
    with pytest.raises(errors.DataError, match="not found"):
        csvs.read_candidates(tmp_path / "missing.csv")


def test_match_nearest_annotation_within_radius():
    anns = [
        csvs.Annotation("s", (0.0, 0.0, 0.0), 10.0, False),  # radius 5
        csvs.Annotation("s", (6.0, 0.0, 0.0), 10.0, True),  # overlaps the first
        csvs.Annotation("t", (0.0, 0.0, 0.0), 4.0, True),
    ]
    cands = [
        csvs.Candidate("s", (2.0, 0.0, 0.0), 1),  # in both, nearer the first (2 < 4)
        csvs.Candidate("s", (4.0, 0.0, 0.0), 1),  # in both, nearer the second (2 < 4)
        csvs.Candidate("s", (0.0, 5.0, 0.0), 1),  # exactly on the radius: outside (strict)
        csvs.Candidate("s", (0.5, 0.0, 0.0), 0),  # non-nodule: never matched
        csvs.Candidate("t", (0.0, 0.0, 1.9), 1),
        csvs.Candidate("u", (0.0, 0.0, 0.0), 1),  # no annotation in its series
    ]
    out = csvs.match_candidates(cands, anns)
    assert [(c.diameter_mm, c.malignancy) for c in out] == [
        (10.0, False),
        (10.0, True),
        (0.0, False),
        (0.0, False),
        (4.0, True),
        (0.0, False),
    ]
    assert [c.xyz for c in out] == [c.xyz for c in cands]


def test_load_candidates_uses_malignancy_table(luna_root):
    cands = csvs.load_candidates(luna_root)
    nodules = [c for c in cands if c.label == 1]
    assert nodules and all(c.diameter_mm >= 3.0 for c in nodules)
    table = csvs.read_annotations(luna_root / "annotations_with_malignancy.csv")
    if any(a.malignancy for a in table):
        assert any(c.malignancy for c in nodules)
    assert not any(c.malignancy or c.diameter_mm for c in cands if c.label == 0)


def test_split_by_series_deterministic_disjoint():
    uids = [f"u{i}" for i in range(20)]
    train, val = csvs.split_by_series(uids, 0.25, seed=7)
    assert len(val) == 5 and len(train) == 15
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(uids)
    # Independent of input order and duplicates; dependent on the seed.
    assert csvs.split_by_series(uids[::-1] + uids, 0.25, seed=7) == (train, val)
    assert csvs.split_by_series(uids, 0.25, seed=8)[1] != val
    assert csvs.split_by_series(["a", "b"], 0.01, seed=0)[1] != []  # At least one val series.
    with pytest.raises(errors.ConfigError):
        csvs.split_by_series(uids, 1.0, seed=0)


def test_luna_fold_split_is_by_subset(luna_root, luna_args):
    scans = csvs.find_scans(luna_root)
    for fold in range(luna_args["num_subsets"]):
        train, val = csvs.luna_fold_split(luna_root, fold)
        assert val and all(scans[u][0] == fold for u in val)
        assert all(scans[u][0] != fold for u in train)
        assert sorted(train + val) == sorted(scans)
    with pytest.raises(errors.ConfigError, match="subsets"):
        csvs.luna_fold_split(luna_root, 9)


def test_find_scans_rejects_duplicates(tmp_path):
    for k in (0, 1):
        (tmp_path / f"subset{k}").mkdir()
        (tmp_path / f"subset{k}" / "x.mhd").write_text("")
    with pytest.raises(errors.DataError, match="x"):
        csvs.find_scans(tmp_path)
    assert csvs.find_scans(tmp_path / "none") == {}

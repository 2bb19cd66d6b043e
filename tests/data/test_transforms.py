"""Patch sampling: foreground forcing, padding, determinism per row."""

import numpy as np

from medjax.data import transforms


def _record(shape=(20, 30), fg=((12, 25),)):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(*shape, 1)
    label = np.zeros(shape, np.uint8)
    for p in fg:
        label[p] = 1
    return {
        "image": image,
        "label": label,
        "locations": {"class_1": np.argwhere(label == 1).astype(np.int32)},
    }


def test_forced_patch_contains_foreground_and_matches_source():
    rec = _record()
    for seed in range(30):
        patch = transforms.sample_patch(rec, (8, 8), np.random.default_rng(seed), force_fg=True)
        assert patch["label"].sum() == 1
        # The image patch is a contiguous crop of the source: recover its offset from one value.
        first = int(patch["image"][0, 0, 0])
        r, c = divmod(first, 30)
        np.testing.assert_array_equal(patch["image"][..., 0], rec["image"][r : r + 8, c : c + 8, 0])
        np.testing.assert_array_equal(patch["label"], rec["label"][r : r + 8, c : c + 8])


def test_random_patch_positions_cover_the_case_and_stay_inside():
    rec = _record()
    starts = set()
    for seed in range(200):
        patch = transforms.sample_patch(rec, (8, 8), np.random.default_rng(seed), force_fg=False)
        first = int(patch["image"][0, 0, 0])
        starts.add(divmod(first, 30))
    rows = {s[0] for s in starts}
    cols = {s[1] for s in starts}
    assert min(rows) == 0 and max(rows) == 12 and min(cols) == 0 and max(cols) == 22


def test_patch_larger_than_case_is_zero_padded():
    rec = _record(shape=(4, 6), fg=((1, 1),))
    patch = transforms.sample_patch(rec, (8, 8), np.random.default_rng(0), force_fg=True)
    assert patch["image"].shape == (8, 8, 1)
    assert patch["label"].sum() == 1
    assert np.count_nonzero(patch["image"]) == 4 * 6 - 1  # the source's only zero is value 0
    assert patch["image"].sum() == rec["image"].sum()


def test_batch_rows_are_independent_of_process_slicing():
    src = [_record(fg=((i % 20, 3),)) for i in range(8)]
    whole = transforms.LoadPatchBatch(src, (8, 8), fg_oversample=0.5, seed=3, rows=slice(0, 4))
    halves = [
        transforms.LoadPatchBatch(
            src, (8, 8), fg_oversample=0.5, seed=3, rows=slice(p * 2, p * 2 + 2)
        )
        for p in range(2)
    ]
    idx = np.array([5, 1, 7, 2])
    a = whole(11, idx)
    b = [h(11, idx) for h in halves]
    np.testing.assert_array_equal(a["image"], np.concatenate([x["image"] for x in b]))
    # Last half of the batch is forced to foreground.
    assert a["label"][2:].reshape(2, -1).sum(1).min() >= 1

"""pipeline: Grain read options (threads and buffer per process) and their effect on batches."""

import itertools

import numpy as np
import pytest

from medjax.data import pipeline


def _source(n=6, shape=(8, 20, 24)):
    rng = np.random.default_rng(0)
    records = []
    for _ in range(n):
        image = rng.standard_normal((*shape, 1)).astype(np.float32)
        label = (image[..., 0] > 1.5).astype(np.uint8)
        records.append(
            {
                "image": image,
                "label": label,
                "locations": {"class_1": np.argwhere(label == 1).astype(np.int32)},
            }
        )
    return records


@pytest.mark.parametrize(
    "cpus, workers, want_threads",
    [(2, 0, 2), (2, 2, 1), (16, 0, 4), (16, 4, 4), (16, 8, 2), (1, 4, 1), (None, 0, 1)],
)
def test_read_options_scale_with_cpus_and_workers(monkeypatch, cpus, workers, want_threads):
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: cpus)
    options = pipeline.read_options(workers)
    assert options.num_threads == want_threads
    assert options.prefetch_buffer_size == 2 * want_threads
    # Explicit values are kept (Grain's own defaults are 16 threads, 500 elements).
    explicit = pipeline.read_options(workers, threads=3, prefetch_batches=5)
    assert (explicit.num_threads, explicit.prefetch_buffer_size) == (3, 5)


def test_batches_do_not_depend_on_threads_buffer_or_workers():
    source = _source()

    def first_batches(**kwargs):
        ds = pipeline.make_train_dataset(
            source, patch_size=(4, 8, 8), global_batch_size=3, fg_oversample=0.5, seed=7, **kwargs
        )
        it = iter(ds)
        try:
            return [next(it) for _ in range(5)]
        finally:
            getattr(it, "close", lambda: None)()

    reference = first_batches(num_workers=0, read_threads=1, prefetch_batches=1)
    for kwargs in (
        {"num_workers": 0, "read_threads": 4, "prefetch_batches": 8},
        {"num_workers": 1},
    ):
        got = first_batches(**kwargs)
        for a, b in itertools.zip_longest(reference, got):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    # The patches are real crops: the forced-foreground rows hold foreground.
    assert all(b["label"][-1].any() for b in reference)

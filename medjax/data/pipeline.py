"""The data pipeline: the only module that chains Grain (STYLE.md sec. 6).

``prepare_data`` crawls the data root (or generates the built-in dataset), builds the
preprocessing store and splits its cases. ``make_train_dataset`` is the seeded, checkpointable
Grain loader of patches (``make_sample_dataset``: of whole samples with a class each, optionally
class-balanced); ``eval_batches`` walks a split exactly once in padded batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from medjax import errors, registry
from medjax.data import case_ids, progress, sampling, sources, store, synthetic, transforms, workers
from medjax.data import splits as splits_lib
from medjax.data.preprocess import pipeline as preprocess_pipeline


@dataclasses.dataclass
class Data:
    """A built store and its cases per split."""

    store_dir: str
    root: str
    splits: dict[str, list[dict[str, Any]]]

    def source(self, split: str) -> sources.StoreSource:
        """A random-access source over the cases of ``split``."""
        if not self.splits.get(split):
            raise errors.DataError(
                f"Split {split!r} of {self.root} has no usable case "
                f"(splits: { {k: len(v) for k, v in self.splits.items()} })."
            )
        return sources.StoreSource(self.store_dir, self.splits[split])

    def describe(self) -> str:
        """The store, its fingerprint and resolved spec, and the cases per split, for people."""
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"{store.describe(self.store_dir)}\nsplits: {splits}"


def _assign_split(
    case_id: str, val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> str:
    """``"val"``, ``"test"`` or ``"train"`` for a case without a split, from a hash of its id.

    The hash maps the id to ``u`` in [0, 1): val when ``u < val_fraction``, test when
    ``u < val_fraction + test_fraction``, else train. A case therefore keeps its split when
    other cases are added, and the validation cases are the same with or without a test split.
    ``seed`` 0 hashes the id alone (the assignment medjax has always made); another seed
    re-draws every split.
    """
    key = case_id if seed == 0 else f"{seed}:{case_id}"
    h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < val_fraction:
        return "val"
    return "test" if h < val_fraction + test_fraction else "train"


def _split_cases(cases: list[dict[str, Any]], data: ml_collections.ConfigDict) -> list[dict]:
    """``cases`` with ``split`` set to one of ``data.{train,val,test}_split`` (or the crawler's).

    Splits the folder layout names are kept. Cases without one (and, when the crawler marks
    every labelled case "train" as Decathlon's imagesTr, those too) get a hash-based split:
    ``data.val_fraction`` validation and, when the dataset has no test split,
    ``data.test_fraction`` held-out test cases; never the validation cases reused as test.
    """
    vf, tf = float(data.val_fraction), float(data.test_fraction)
    if not (0.0 <= vf < 1.0 and 0.0 <= tf < 1.0 and vf + tf < 1.0):
        raise errors.ConfigError(
            f"data.val_fraction={vf} and data.test_fraction={tf}: each must be in [0, 1) and "
            "their sum below 1 (the rest trains)."
        )
    given = {c.get("split") for c in cases}
    has_val, has_test = data.val_split in given, data.test_split in given
    names = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    out = []
    for case in cases:
        split = case.get("split")
        if not split or (split == data.train_split and not has_val):
            split = names[_assign_split(case["id"], vf, 0.0 if has_test else tf, data.split_seed)]
        out.append({**case, "split": split})
    return out


def data_root(config: ml_collections.ConfigDict) -> str:
    """``config.data.root``, or the built-in dataset's folder (generated on first use)."""
    if config.data.root:
        root = os.path.abspath(os.path.expanduser(config.data.root))
        if not os.path.exists(root):
            raise errors.DataError(f"config.data.root={config.data.root!r}: no such folder.")
        return root
    return synthetic.ensure_dataset(config.data.synthetic, **config.data.synthetic_kwargs.to_dict())


def prepare_data(config: ml_collections.ConfigDict) -> Data:
    """Crawls, splits and preprocesses (new or changed cases only) the dataset.

    The split comes first so that the fingerprint (spacing, CT window, normalisation
    statistics) is computed from the training cases only. The store's ``report.json`` lists the
    cases of each split. Only process 0 writes the store; the others wait for it (the store is
    on a shared disk in a multi-host run) by building after a barrier.
    """
    root = data_root(config)
    crawl = registry.lookup("crawlers", config.data.crawler, **config.data.crawler_kwargs.to_dict())
    crawled = crawl(root)
    skipped_files = list(getattr(crawled, "skipped_files", []))
    cases = _split_cases(case_ids.sanitise_cases(crawled), config.data)
    spec = preprocess_pipeline.unset_none_tuples(config.data.preprocess.to_dict())
    store_dir = config.data.store_dir or os.path.join(
        synthetic.cache_dir(), "store", f"{os.path.basename(root)}-{store.spec_hash([root, spec])}"
    )
    train_ids = [c["id"] for c in cases if c["split"] == config.data.train_split]
    manifest = store.build_store(
        cases,
        store_dir,
        spec,
        workers=config.data.preprocess_workers,
        fingerprint_ids=train_ids,
        skipped_files=skipped_files,
    )
    splits: dict[str, list[dict[str, Any]]] = {}
    by_id = {c["id"]: c for c in cases}
    for entry in manifest["cases"]:
        case = by_id[entry["id"]]
        if case.get("class_index") is not None:
            # A class index (classification_folder) is not a file, so the store does not keep
            # it; it comes from this crawl, which is the truth for the folder as it is now.
            entry["class_index"] = int(case["class_index"])
            entry["class_names"] = list(case.get("class_names") or [])
        splits.setdefault(entry["split"], []).append(entry)
    # k-fold cross-validation (data.fold): train + val re-split by <store>/splits.json.
    groups = {cid: str(c.get("group") or cid) for cid, c in by_id.items()}
    splits = splits_lib.apply_fold(splits, config, store_dir, groups)
    if config.data.test_split not in splits:
        # Only when split folders name train and val but no test, or data.test_fraction=0.
        progress.notice(
            f"{root} has no {config.data.test_split!r} split: evaluating it uses the validation "
            "cases (data.test_fraction > 0 holds one out of a dataset without split folders)."
        )
        splits[config.data.test_split] = splits.get(config.data.val_split, [])
    return Data(store_dir=store_dir, root=root, splits=splits)


def _ensure_absl_flags() -> None:
    # Grain's multiprocessing reads absl flags; library callers (tests, notebooks) never parse them.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


# Grain's default ReadOptions (16 reader threads and a 500-element buffer in *every* process)
# are sized for small records on big hosts. Our elements are whole batches of 3D patches
# (4 x 96^3 float32 = 14 MB): 500 of them is 7 GB per process, and 16 threads per worker
# thrash a few cores. Measured on 2 cores (benchmarks/RESULTS.md, loader): with the defaults,
# 2 workers gave 4-10 patches/s against 170-280 in-process.
def read_options(
    num_workers: int, threads: int = 0, prefetch_batches: int = 0
) -> grain.ReadOptions:
    """Reader threads and prefetch buffer for one process of a Grain pipeline of batches.

    Args:
      num_workers: Grain worker processes (0: the reading happens in this process).
      threads: reader threads per process; 0 picks ``cpus // max(1, workers)``, clipped to 1..4.
      prefetch_batches: batches buffered per process; 0 picks ``2 * threads``.

    Returns:
      ``grain.ReadOptions`` for ``to_iter_dataset``.
    """
    if threads <= 0:
        threads = min(4, max(1, (os.cpu_count() or 1) // max(1, num_workers)))
    if prefetch_batches <= 0:
        prefetch_batches = 2 * threads
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch_batches)


def make_train_dataset(
    source: Any,
    *,
    patch_size: tuple[int, ...],
    global_batch_size: int,
    fg_oversample: float,
    seed: int,
    num_workers: int,
    read_threads: int = 0,
    prefetch_batches: int = 0,
) -> grain.IterDataset:
    """An endless, seeded dataset of this process's share of each global batch.

    Order: case indices shuffled per epoch (reshuffled every repetition) -> global batches of
    indices -> each process loads its rows of each batch (``LoadPatchBatch``). Batch ``b`` is the
    same on 1 or N processes. ``read_threads`` / ``prefetch_batches``: see ``read_options``.
    """
    n_proc, proc = jax.process_count(), jax.process_index()
    if global_batch_size % n_proc:
        raise errors.ConfigError(
            f"train.batch_size={global_batch_size} is not divisible by {n_proc} processes."
        )
    per_proc = global_batch_size // n_proc
    ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
    ds = ds.batch(global_batch_size, drop_remainder=True)
    load = transforms.LoadPatchBatch(
        source,
        patch_size,
        fg_oversample=fg_oversample,
        seed=seed,
        rows=slice(proc * per_proc, (proc + 1) * per_proc),
    )
    options = read_options(num_workers, read_threads, prefetch_batches)
    ds = ds.map_with_index(load).to_iter_dataset(options)
    if num_workers > 0:
        _ensure_absl_flags()
        ds = workers.mp_prefetch(ds, num_workers)  # workers exit with this process
    return ds


class _ProcessRows:
    """Global batch of source indices -> ``load`` of this process's rows of it."""

    def __init__(self, load: Callable[[np.ndarray], dict[str, np.ndarray]], rows: slice):
        self.load, self.rows = load, rows

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self.load(np.asarray(indices)[self.rows])


def make_sample_dataset(
    load: Callable[[np.ndarray], dict[str, np.ndarray]],
    labels: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    num_workers: int,
    ratio: tuple[int, ...] = (),
    epoch_length: int = 0,
    read_threads: int = 0,
    prefetch_batches: int = 0,
) -> grain.IterDataset:
    """An endless, seeded dataset of whole samples (classification), one label each.

    Order: with ``ratio`` empty, every epoch is a fresh shuffle of all samples; otherwise
    epochs of ``epoch_length`` samples at the class ratio ``ratio``
    (``sampling.BalancedIndices``).
    Then global batches of indices, of which each process loads its rows with ``load``.

    Args:
      load: picklable ``load(int[b] source indices) -> {"image": [b, ...], "label": [b]}``.
      labels: ``int[N]`` class of each source sample (only read when ``ratio`` is set).
      global_batch_size: rows per global batch (divisible by the process count).
      seed: the data seed.
      num_workers: Grain worker processes (0: in-process).
      ratio: class ratio per epoch (see ``sampling.balanced_epoch_indices``), or empty.
      epoch_length: samples per balanced epoch (0: ``len(labels)``).
      read_threads, prefetch_batches: per process, see ``read_options``.

    Raises:
      ConfigError: the batch does not split over the processes.
    """
    n_proc, proc = jax.process_count(), jax.process_index()
    if global_batch_size % n_proc:
        raise errors.ConfigError(
            f"train.batch_size={global_batch_size} is not divisible by {n_proc} processes."
        )
    per_proc = global_batch_size // n_proc
    if ratio:
        indices = sampling.BalancedIndices(labels, ratio, epoch_length or len(labels), seed)
        ds = grain.MapDataset.source(indices)
    else:
        ds = grain.MapDataset.range(len(labels)).seed(seed).shuffle().repeat()
    ds = ds.batch(global_batch_size, drop_remainder=True)
    ds = ds.map(_ProcessRows(load, slice(proc * per_proc, (proc + 1) * per_proc)))
    ds = ds.to_iter_dataset(read_options(num_workers, read_threads, prefetch_batches))
    if num_workers > 0:
        _ensure_absl_flags()
        ds = workers.mp_prefetch(ds, num_workers)  # workers exit with this process
    return ds


class TrainIterator:
    """A checkpointable iterator of global, sharded device batches.

    It keeps one batch in flight on the device (so the host loads the next batch while the step
    runs) and remembers the Grain state *before* that batch was drawn: the state saved with a
    checkpoint therefore resumes at exactly the next batch the step has not yet seen.
    """

    def __init__(self, dataset: grain.IterDataset, sharding: jax.sharding.NamedSharding):
        self._it = iter(dataset)
        self._sharding = sharding
        self._pending: tuple[dict, dict] | None = None

    def _fetch(self) -> tuple[dict, dict]:
        state = self._it.get_state()
        batch = next(self._it)
        return state, to_global(batch, self._sharding)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        if self._pending is None:
            self._pending = self._fetch()
        _, batch = self._pending
        self._pending = self._fetch()
        return batch

    def get_state(self) -> dict:
        """Grain state at the first batch not yet returned."""
        return self._pending[0] if self._pending is not None else self._it.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a state from ``get_state`` (drops the batch in flight)."""
        self._pending = None
        self._it.set_state(dict(state))

    def close(self) -> None:
        """Stops Grain's worker processes."""
        self._pending = None
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def to_global(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded along the mesh's data axis."""
    # The one intended host->device copy of the training loop: allowed under the loop's
    # transfer guard (with several processes JAX routes it through a path the guard flags).
    with jax.transfer_guard_host_to_device("allow"):
        return {
            k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()
        }


def eval_batches(source: sources.StoreSource, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every case of ``source`` once, whole, in order, in batches padded to ``batch_size``.

    Requires all cases of the split to share one shape (2D data resized to a fixed size);
    larger volumes go through sliding-window inference instead. Padding rows have
    ``valid=False`` and ``index=-1``.

    Yields:
      ``image float32[B, *S, C]``, ``label int32[B, *S]``, ``valid bool[B]``, ``index int32[B]``.
    """
    shapes = set(source.shapes)
    if len(shapes) != 1:
        raise errors.DataError(f"eval_batches needs one case shape, got {sorted(shapes)[:4]}.")
    ds = grain.MapDataset.source(source).batch(
        batch_size, drop_remainder=False, batch_fn=_stack_cases
    )
    for batch in ds:
        n = len(batch["index"])
        pad = batch_size - n
        valid = np.arange(batch_size) < n
        out = {"valid": valid}
        for k, v in batch.items():
            out[k] = np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) if pad else v
        out["index"] = np.where(valid, out["index"], -1).astype(np.int32)
        yield out


def _stack_cases(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {
        "image": np.stack([np.asarray(r["image"], np.float32) for r in records]),
        "index": np.asarray([r["index"] for r in records], np.int32),
    }
    if all("label" in r for r in records):
        batch["label"] = np.stack([np.asarray(r["label"], np.int32) for r in records])
    else:
        batch["label"] = np.zeros(batch["image"].shape[:-1], np.int32)
    return batch

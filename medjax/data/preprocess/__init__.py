"""Offline numpy preprocessing: resampling, intensity normalisation, cropping, fingerprints.

* ``pipeline``: ``preprocess_case(image, label, spec)`` / ``invert_prediction(pred, props)``;
  ``DEFAULT_SPEC`` documents every spec key.
* ``load``: ``load_case(case)`` for crawler cases (NaN/Inf voxels refused, the file named).
* ``resample``: ``resample_image`` / ``resample_label`` (grid-mode scipy zoom, geometry kept).
* ``normalize``: zscore / ct / percentile / minmax / none.
* ``crop``: nonzero body mask, bounding boxes, crop and uncrop.
* ``fingerprint``: ``compute_fingerprint(cases)``, ``suggest_spec(fingerprint, modality)`` and
  ``resolve_auto(spec, fingerprint)`` for ``"auto"`` spec fields (the store caches the
  fingerprint and resolves them: ``medjax.data.store.build_store``).

All of it runs on the host in numpy/scipy; geometry travels as JSON-able ``props``.
"""

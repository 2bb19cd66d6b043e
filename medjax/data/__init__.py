"""Host-side data: IO, preprocessing, the store, Grain sources and transforms, synthetic data."""

"""Offline numpy preprocessing: resampling, intensity normalisation, cropping, fingerprints."""

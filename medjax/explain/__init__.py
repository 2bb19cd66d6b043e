"""Saliency maps: what a model's output depends on (``--mode=explain``).

``attribution`` holds the pure functions (input gradient, integrated gradients, Grad-CAM, the
segmentation region score); ``maps`` runs them on chosen cases of a trained run and writes
NIfTI/PNG overlays and TensorBoard images.
"""

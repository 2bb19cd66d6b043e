"""Experiment tracking backends behind ``medjax.train.metric_writer.MetricWriter``.

TensorBoard + ``metrics.jsonl`` are always written; MLflow (``log.mlflow``) and Weights & Biases
(``log.wandb``) are optional (``pip install 'medjax[tracking]'``) and imported only when enabled.
``system.SystemMonitor`` adds host/device/data-loader metrics under ``system/...``.
"""

"""MetricWriter's HParams session: config and final/best metrics, read back by TensorBoard."""

import glob
import os

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from medjax.testing import configs
from medjax.train import metric_writer


def _hparams_session(workdir):
    """(hparams, metric names, metric values) of the workdir's HParams run, read by TensorBoard."""
    files = glob.glob(os.path.join(workdir, metric_writer.HPARAMS_DIR, "events.out.tfevents.*"))
    assert len(files) == 1, files  # one session per run, a resumed run included
    acc = event_accumulator.EventAccumulator(files[0], size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    names = {m.name.tag for m in exp.experiment.metric_infos}
    hparams = {}
    for k, v in start.session_start_info.hparams.items():
        kind = v.WhichOneof("kind")
        hparams[k] = getattr(v, kind)
    values = {}
    for tag in acc.Tags()["tensors"]:
        if not tag.startswith("_hparams_"):
            (event,) = acc.Tensors(tag)
            values[tag] = float(event.tensor_proto.float_val[0])
    for tag in acc.Tags()["scalars"]:
        values[tag] = acc.Scalars(tag)[-1].value
    return hparams, names, values


def test_hparams_hold_config_and_final_and_best_metrics_across_a_resume(tmp_path):
    workdir = str(tmp_path)
    config = configs.tiny_unet(optim__lr=0.02)
    w = metric_writer.MetricWriter(workdir, config)
    w.write_scalars(2, {"train/loss": 1.5, "train/lr": 0.02, "system/rss_gb": 1.0})
    w.write_scalars(2, {"val/dice": 0.50})
    w.write_scalars(4, {"val/dice": 0.75})
    w.close()
    hparams, names, values = _hparams_session(workdir)
    assert hparams["optim.lr"] == pytest.approx(0.02)
    assert hparams["model.name"] == "unet"
    assert names == {"val/dice", "train/loss", "best/val/dice"}
    assert values["best/val/dice"] == pytest.approx(0.75)
    # A resumed run (new writer, same workdir) replaces the session, with the whole history.
    w = metric_writer.MetricWriter(workdir, config)
    w.write_scalars(6, {"val/dice": 0.60, "train/loss": 1.0})
    w.close()
    _, names, values = _hparams_session(workdir)
    assert values["val/dice"] == pytest.approx(0.60)  # final
    assert values["best/val/dice"] == pytest.approx(0.75)  # best, from the first segment
    assert values["train/loss"] == pytest.approx(1.0)


def test_writer_without_config_writes_no_hparams_and_plain_jsonl(tmp_path):
    w = metric_writer.MetricWriter(str(tmp_path))
    w.write_scalars(1, {"a": 1})
    w.close()
    assert not os.path.exists(tmp_path / metric_writer.HPARAMS_DIR)
    assert '"a": 1.0' in open(tmp_path / "metrics.jsonl").read()

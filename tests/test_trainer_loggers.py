"""gradwatch's figures in the Trainer's own loggers (issue 28, item 1): CSVLogger, MLflow
(file store) and W&B (offline) read back from what each stored; callback_metrics for
EarlyStopping; no second copy in a TensorBoardLogger's run; a readable run name."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
import zlib
from pathlib import Path

import pytest
import torch

from gradwatch.callbacks import TrainingDiagnostics

from .helpers import close, layer_grad_norm, read_scalars
from .lightning_models import lightning, regression_module

pytestmark = pytest.mark.training

pl = lightning()
EVERY_N_STEPS, LOG_EVERY_N_STEPS, STEPS = 4, 2, 8


class Reference(pl.Callback):
    """Every step's global gradient norm and each layer's, computed without gradwatch."""

    def __init__(self):
        self.global_norm: dict[int, float] = {}
        self.layer_norm: dict[tuple[int, str], float] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer):
        step = trainer.global_step
        grads = torch.cat([p.grad.flatten() for p in module.parameters()])
        self.global_norm[step] = torch.linalg.vector_norm(grads).item()
        for name, layer in module.net.named_children():
            if layer._parameters:
                self.layer_norm[(step, f"net.{name}")] = layer_grad_norm(layer)


def fit(tmp_path, loggers, **options) -> tuple[TrainingDiagnostics, Reference, object]:
    diagnostics = TrainingDiagnostics(every_n_steps=EVERY_N_STEPS, **options)
    reference = Reference()
    trainer = pl.Trainer(max_steps=STEPS, logger=loggers, callbacks=[diagnostics, reference],
                         log_every_n_steps=LOG_EVERY_N_STEPS, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(regression_module())
    return diagnostics, reference, trainer


def logged_steps() -> list[int]:
    """The steps Lightning logs at: k with k + 1 a multiple of log_every_n_steps."""
    return [k for k in range(STEPS) if (k + 1) % LOG_EVERY_N_STEPS == 0]


def sampled_steps() -> list[int]:
    return [k for k in range(STEPS) if k % EVERY_N_STEPS == 0] + [STEPS - 1]


def test_csv_logger_gets_every_figure_at_lightnings_steps(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    diagnostics, reference, trainer = fit(tmp_path, [logger],
                                          tensorboard_dir=str(tmp_path / "tb"))
    with open(logger.experiment.metrics_file_path, newline="") as file:
        rows = list(csv.DictReader(file))
    columns = set(rows[0])
    for name in ("gradwatch/global_grad_norm", "gradwatch/loss", "gradwatch/regime",
                 "gradwatch/grad_norm/net.0", "gradwatch/update_ratio/net.4",
                 "gradwatch/activation_mean/net.2", "gradwatch/weight_norm/net.0"):
        assert name in columns, sorted(columns)
    norms = {int(row["step"]): float(row["gradwatch/global_grad_norm"]) for row in rows
             if row["gradwatch/global_grad_norm"]}
    assert sorted(norms) == logged_steps()
    for step, norm in norms.items():
        assert close(norm, reference.global_norm[step]), (step, norm)
    layer = {int(row["step"]): float(row["gradwatch/grad_norm/net.2"]) for row in rows
             if row["gradwatch/grad_norm/net.2"]}
    assert sorted(layer) == sorted(set(sampled_steps()))
    for step, norm in layer.items():
        assert close(norm, reference.layer_norm[(step, "net.2")], rel=1e-3), (step, norm)
    assert {float(row["gradwatch/regime"]) for row in rows if row["gradwatch/regime"]} == {0.0}
    # the headline figures in callback_metrics, for EarlyStopping and ModelCheckpoint
    last = max(reference.global_norm)
    assert close(float(trainer.callback_metrics["gradwatch/global_grad_norm"]),
                 reference.global_norm[last])
    assert float(trainer.callback_metrics["gradwatch/regime"]) == 0.0
    assert diagnostics.last_snapshot.run == "csv/version_0"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed")
def test_mlflow_gets_the_figures_under_a_readable_run_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = pl.loggers.MLFlowLogger(experiment_name="gradwatch-test", run_name="tiny",
                                     tracking_uri=f"file:{tmp_path / 'mlruns'}")
    diagnostics, reference, _ = fit(tmp_path, [logger], tensorboard_dir=str(tmp_path / "tb"))
    client = logger.experiment
    history = client.get_metric_history(logger.run_id, "gradwatch/global_grad_norm")
    assert sorted(m.step for m in history) == logged_steps()
    for metric in history:
        assert close(metric.value, reference.global_norm[metric.step])
    layer = client.get_metric_history(logger.run_id, "gradwatch/grad_norm/net.0")
    assert sorted({m.step for m in layer}) == sorted(set(sampled_steps()))
    for metric in layer:
        assert close(metric.value, reference.layer_norm[(metric.step, "net.0")], rel=1e-3)
    assert diagnostics.last_snapshot.run == "gradwatch-test/tiny"


def wandb_records(path: Path):
    """The Records of an offline run's ``.wandb`` file (W&B's transaction log: LevelDB's log
    format, a 7-byte ``:W&B`` header, records in 32 KiB blocks, each chunk's CRC32 over its
    type and data), parsed with W&B's own ``Record`` proto, every checksum checked (wandb
    0.2x's Python reader, ``wandb.sdk.internal.datastore``, is gone: its Go core writes it)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:header] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    position, pending = header, b""
    while position + header <= len(data):
        left = block - position % block
        checksum, length, kind = struct.unpack("<IHB", data[position:position + header])
        if left < header or (kind, length) == (0, 0):   # a block's zero-filled tail
            position += left
            continue
        chunk = data[position + header:position + header + length]
        assert checksum == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), position
        position += header + length
        pending += chunk
        if kind in (1, 4):   # a full record, or its last chunk
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed "
                    "(the test extra installs it: pip install -e '.[test]')")
def test_wandb_gets_the_figures_under_a_readable_run_name(tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
                        "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    logger = pl.loggers.WandbLogger(project="gradwatch-test", name="tiny", offline=True,
                                    save_dir=str(tmp_path))
    diagnostics, reference, _ = fit(tmp_path, [logger], tensorboard_dir=str(tmp_path / "tb"))
    logger.experiment.finish()
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in record.history.item}
            for record in wandb_records(log) if record.WhichOneof("record_type") == "history"]
    # W&B's own step counts log calls; Lightning's step is trainer/global_step
    norms = {row["trainer/global_step"]: row["gradwatch/global_grad_norm"] for row in rows
             if "gradwatch/global_grad_norm" in row}
    assert sorted(norms) == logged_steps()
    for step, norm in norms.items():
        assert close(norm, reference.global_norm[step]), (step, norm)
    layer = {row["trainer/global_step"]: row["gradwatch/grad_norm/net.0"] for row in rows
             if "gradwatch/grad_norm/net.0" in row}
    assert sorted(layer) == sorted(set(sampled_steps()))
    for step, norm in layer.items():
        assert close(norm, reference.layer_norm[(step, "net.0")], rel=1e-3), (step, norm)
    assert {row["gradwatch/regime"] for row in rows if "gradwatch/regime" in row} == {0}
    assert diagnostics.last_snapshot.run == "gradwatch-test/tiny"


def test_early_stopping_monitors_the_global_grad_norm(tmp_path):
    """EarlyStopping(monitor=...) reads callback_metrics: with a norm it can never beat
    (stopping_threshold above every norm), it stops the fit at the first epoch end."""
    stopping = pl.callbacks.EarlyStopping(monitor="gradwatch/global_grad_norm", mode="min",
                                          stopping_threshold=1e9, check_on_train_epoch_end=True)
    diagnostics = TrainingDiagnostics(every_n_steps=EVERY_N_STEPS, tensorboard=False)
    trainer = pl.Trainer(max_epochs=5, logger=False, callbacks=[diagnostics, stopping],
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(regression_module())
    batches_per_epoch = 8  # tests.helpers.loader: 256 samples, batches of 32
    assert trainer.current_epoch == 1 and trainer.global_step == batches_per_epoch
    assert stopping.stopped_epoch == 0


def test_a_tensorboard_logger_gets_each_figure_once(tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    fit(tmp_path, [logger])
    scalars = read_scalars(logger.log_dir)
    steps = [step for step, _ in scalars["gradwatch/global_grad_norm"]]
    assert sorted(steps) == list(range(STEPS)), "every step, once"
    layer_steps = [step for step, _ in scalars["gradwatch/grad_norm/net.0"]]
    assert sorted(layer_steps) == sorted(set(sampled_steps()))

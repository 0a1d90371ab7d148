"""One Keras model per backbone for the cross-validation folds: built and compiled once, reset per fold.

TensorFlow graph tracing costs minutes per backbone on 2 cores, so `BackboneTrainer` keeps one compiled
model and resets its weights and optimizer state to their initial values for every fold instead of
rebuilding it. Training uses augmented, class-weighted batches whose order depends only on (seed, fold,
epoch, batch), fed by a tf.data pipeline that augments the next batches (numpy/OpenCV, which release the
GIL) while the current one trains, from the ROIs decoded and cropped once per run (converters/train_data.py);
early stopping on the inner validation AUC. The model is built under the run's precision (fp32 or Keras
mixed_bfloat16, converters/precision.py); `export_model` gives the float32 model that is saved and converted.
TensorFlow is imported inside.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from converters import require_train_extra
from converters.precision import backbone_precision, export_copy, keras_policy

# keras.applications ship BatchNormalization momentum 0.99-0.9997 (NASNetMobile 0.9997), tuned for ImageNet-length
# runs. With a few hundred steps the moving averages barely leave their initial values, so inference-mode
# predictions (validation, OOF, the saved model) come from wrong statistics: measured, a NASNetMobile fold at
# 96 px from scratch reached test AUC 0.31 with 0.9997. 0.9 lets them follow the data within an epoch.
BN_MOMENTUM = 0.9
# Early stopping watches the inner validation AUC (what model selection ranks on), not its loss: from
# scratch, the validation loss swings with batch-norm statistics while the ranking is already good, and
# measured on the default phantom at 160 px a val-loss stopper restored epoch 1 in one fold (test AUC
# 0.75 vs 0.91-0.95 in the others). No stop is taken before EARLY_STOP_WARMUP epochs.
EARLY_STOP_MONITOR = "val_auc"
EARLY_STOP_WARMUP = 3


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class BackboneTrainer:
    """One compiled model per backbone, reset to its initial weights and optimizer state for every fold."""

    def __init__(self, backbone: str, cfg, log: logging.Logger):  # cfg: converters.train.TrainConfig
        quiet_tensorflow()
        tf = require_train_extra("tensorflow")
        from converters.models import build_cam_model

        keras = tf.keras
        self.keras, self.backbone, self.cfg, self.log = keras, backbone, cfg, log
        weights = cfg.weights.get(backbone)
        self.learning_rate = cfg.learning_rate or (1e-4 if weights else 1e-3)
        self.precision = backbone_precision(cfg.precision, cfg.precision_requested, backbone)
        self._build = lambda w: build_cam_model(backbone, cfg.input_size, w, seed=cfg.seed)
        t0 = time.perf_counter()
        with keras_policy(self.precision):
            self.model = self._build(weights)
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(float(layer.momentum), BN_MOMENTUM)
        self.train_model = keras.Model(self.model.inputs, self.model.get_layer("prob").output,
                                       name=f"{backbone}_train")
        self.optimizer = keras.optimizers.Adam(self.learning_rate)
        self.train_model.compile(optimizer=self.optimizer, loss="binary_crossentropy",
                                 metrics=[keras.metrics.AUC(name="auc")], jit_compile=False,
                                 run_eagerly=cfg.quick)
        self.optimizer.build(self.train_model.trainable_variables)
        self._initial_model = [v.numpy() for v in self.model.variables]
        self._initial_optimizer = [v.numpy() for v in self.optimizer.variables]
        log.info("%s: built at %d px (%d parameters, weights %s, lr %g, precision %s) in %.1f s", backbone,
                 cfg.input_size, self.model.count_params(), weights or "from scratch", self.learning_rate,
                 self.precision, time.perf_counter() - t0)

    def reset(self) -> None:
        for v, a in zip(self.model.variables, self._initial_model, strict=False):
            v.assign(a)
        for v, a in zip(self.optimizer.variables, self._initial_optimizer, strict=False):
            v.assign(a)

    def fit(self, x, y, fold: int, epochs: int, desc: str, validation=None) -> dict:
        """Train with augmentation and class weights; with validation, early stopping restores the best epoch."""
        keras, cfg = self.keras, self.cfg
        n_pos = int(y.sum())
        class_weight = {0: len(y) / (2.0 * (len(y) - n_pos)), 1: len(y) / (2.0 * n_pos)}
        weights = np.where(y == 1, class_weight[1], class_weight[0]).astype("float32")
        batches, steps = training_batches(x, y.astype("float32").reshape(-1, 1), weights, cfg.batch_size, cfg.seed,
                                          fold, epochs)
        callbacks = [_progress_callback(keras)(desc, epochs, steps, self.log, cfg.progress)]
        stopper = None
        if validation is not None:
            stopper = keras.callbacks.EarlyStopping(monitor=EARLY_STOP_MONITOR, mode="max", patience=cfg.patience,
                                                    restore_best_weights=True,
                                                    start_from_epoch=EARLY_STOP_WARMUP)
            callbacks.append(stopper)
            validation = (validation[0], validation[1].astype("float32").reshape(-1, 1))
        history = self.train_model.fit(batches, steps_per_epoch=steps, validation_data=validation, epochs=epochs,
                                       verbose=0, callbacks=callbacks,
                                       shuffle=False)  # the batches are shuffled already (training_batches)
        hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        epochs_run = len(hist.get("loss", []))
        best = int(stopper.best_epoch) + 1 if stopper is not None and stopper.best_weights is not None else epochs_run
        return {"history": hist, "epochs_run": epochs_run, "best_epoch": best,
                "class_weight": {str(k): v for k, v in class_weight.items()}}

    def predict(self, x) -> tuple[np.ndarray, np.ndarray]:
        out = self.model.predict(x, batch_size=64, verbose=0)
        return np.asarray(out["prob"]).reshape(-1), np.asarray(out["cam"])

    def head_bias(self) -> float:
        return float(self.model.get_layer("head_dense").get_weights()[1][0])

    def export_model(self):
        """The trained model as float32 (a bf16-trained one is rebuilt under float32 with its weights)."""
        return export_copy(self.model, lambda: self._build(None))


def training_batches(x, y, w, batch_size: int, seed: int, fold: int, epochs: int):
    """(tf.data.Dataset of (images, labels, weights) for all `epochs`, steps per epoch). Batch i of epoch e is
    shuffled and augmented from (seed, fold, e, i) alone, so a run repeats exactly; prefetching overlaps the
    augmentation of the next batches with the current training step."""
    tf = require_train_extra("tensorflow")
    from converters.augment import augment_batch, batch_rng, epoch_order

    n = len(x)
    steps = math.ceil(n / batch_size)

    def batch(i):
        epoch, b = divmod(int(i), steps)
        idx = epoch_order(n, seed, fold, epoch)[b * batch_size:(b + 1) * batch_size]
        return augment_batch(x[idx], batch_rng(seed, fold, epoch, b)), y[idx], w[idx]

    def as_tensors(i):
        xb, yb, wb = tf.numpy_function(batch, [i], (tf.uint8, tf.float32, tf.float32), stateful=False)
        xb.set_shape((None, *x.shape[1:]))
        yb.set_shape((None, *y.shape[1:]))
        wb.set_shape((None,))
        return xb, yb, wb

    data = tf.data.Dataset.range(epochs * steps).map(as_tensors, num_parallel_calls=tf.data.AUTOTUNE,
                                                       deterministic=True)
    return data.prefetch(tf.data.AUTOTUNE), steps


def _progress_callback(keras):
    from tqdm import tqdm

    class TqdmProgress(keras.callbacks.Callback):
        """A batch bar over all epochs of one fit (tqdm gives the ETA); one log line per epoch."""

        def __init__(self, desc, epochs, steps, log, enabled):
            super().__init__()
            self.desc, self.epochs, self.steps, self.log, self.enabled = desc, epochs, steps, log, enabled
            self.bar = None
            self.t0 = 0.0

        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=self.epochs * self.steps, desc=self.desc, unit="batch", leave=False,
                            position=1, disable=not self.enabled, dynamic_ncols=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            shown = {k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_auc")}
            self.bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", **shown)
            self.log.info("%s epoch %d/%d %s (%.1f s)", self.desc, epoch + 1, self.epochs,
                          " ".join(f"{k}={v:.4f}" for k, v in logs.items()), time.perf_counter() - self.t0)

        def on_train_end(self, logs=None):
            self.bar.close()

    return TqdmProgress

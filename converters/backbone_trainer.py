"""One Keras model per backbone for the cross-validation folds: built and compiled once, reset per fold.

TensorFlow graph tracing costs minutes per backbone on 2 cores, so `BackboneTrainer` keeps one compiled
model and resets its weights and optimizer state to their initial values for every fold instead of
rebuilding it. Training uses augmented, class-weighted batches whose order depends only on (seed, fold,
epoch, batch), and early stopping on the inner validation AUC. TensorFlow is imported inside.
"""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np

from converters import require_train_extra

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
        t0 = time.perf_counter()
        self.model = build_cam_model(backbone, cfg.input_size, weights, seed=cfg.seed)
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
        log.info("%s: built at %d px (%d parameters, weights %s, lr %g) in %.1f s", backbone, cfg.input_size,
                 self.model.count_params(), weights or "from scratch", self.learning_rate, time.perf_counter() - t0)

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
        batches = _augmented_batches(keras)(x, y.astype("float32").reshape(-1, 1), weights, cfg.batch_size,
                                            cfg.seed, fold)
        callbacks = [_progress_callback(keras)(desc, epochs, len(batches), self.log, cfg.progress)]
        stopper = None
        if validation is not None:
            stopper = keras.callbacks.EarlyStopping(monitor=EARLY_STOP_MONITOR, mode="max", patience=cfg.patience,
                                                    restore_best_weights=True,
                                                    start_from_epoch=EARLY_STOP_WARMUP)
            callbacks.append(stopper)
            validation = (validation[0], validation[1].astype("float32").reshape(-1, 1))
        history = self.train_model.fit(batches, validation_data=validation, epochs=epochs, verbose=0,
                                       callbacks=callbacks)
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


def _augmented_batches(keras):
    from converters.augment import augment_batch, batch_rng, epoch_order

    class AugmentedBatches(keras.utils.PyDataset):
        """Shuffled, augmented batches; batch i of epoch e depends only on (seed, fold, e, i)."""

        def __init__(self, x, y, w, batch_size, seed, fold):
            super().__init__()
            self.x, self.y, self.w = x, y, w
            self.batch_size, self.seed, self.fold, self.epoch = batch_size, seed, fold, 0

        def __len__(self):
            return math.ceil(len(self.x) / self.batch_size)

        def __getitem__(self, i):
            order = epoch_order(len(self.x), self.seed, self.fold, self.epoch)
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = augment_batch(self.x[idx], batch_rng(self.seed, self.fold, self.epoch, i))
            return xb, self.y[idx], self.w[idx]

        def on_epoch_end(self):
            self.epoch += 1

    return AugmentedBatches


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

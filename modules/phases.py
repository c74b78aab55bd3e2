"""The transfer-learning phases: fit, evaluate, guard.

Phase 1 (feature extraction) trains the head on frozen backbones.
Fine-tuning follows: one phase (phase 2) or several (progressive
unfreezing), each unfreezing the top of each backbone (modules/model.py
`unfreeze`) and training at its own learning rate. What every phase of a
run shares (the model, its towers, the strategy, the data, the callbacks
and the FitOptions) travels in one PhaseContext. Every fit is guarded: a
NaN or infinite training loss raises TrainingDivergedError at once.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Union

from absl import logging
import tensorflow as tf
import tf_keras as keras

from modules import model as model_lib
from modules import schedules
from pipeline import settings as settings_lib

# What a phase unfreezes: one setting for every tower, or one per tower (an
# int: the top N layers, 0 for none).
FineTuneLayers = Union[
  int, settings_lib.Unfreeze, Sequence[Union[int, settings_lib.Unfreeze]]
]


class TrainingDivergedError(RuntimeError):
  """A phase's training loss became NaN or infinite; nothing may be pushed."""


@dataclasses.dataclass
class FitOptions:
  """What every phase's fit shares beyond its epochs and learning rate.

  Attributes:
    lr_schedule: a schedules.SCHEDULES name, with `lr_decay_rate` and
      `lr_warmup_epochs`.
    steps_per_epoch: training batches per epoch, for the schedules; None:
      the dataset's cardinality, else counted once.
    early_stopping_patience: epochs without a lower val_loss before a phase
      stops (the best epoch's weights are restored); 0: off.
    class_weight: {class index: loss weight}, or None.
  """

  lr_schedule: str = schedules.CONSTANT
  lr_decay_rate: float = 0.9
  lr_warmup_epochs: float = 0.0
  steps_per_epoch: Optional[int] = None
  early_stopping_patience: int = 0
  class_weight: Optional[Dict[int, float]] = None

  @classmethod
  def from_config(
    cls, config: settings_lib.TrainerConfig, **kwargs
  ) -> 'FitOptions':
    return cls(
      lr_schedule=config.lr_schedule,
      lr_decay_rate=config.lr_decay_rate,
      lr_warmup_epochs=config.lr_warmup_epochs,
      early_stopping_patience=config.early_stopping_patience,
      **kwargs,
    )


@dataclasses.dataclass
class PhaseContext:
  """What every phase of one training run shares.

  Attributes:
    model: what the phases fit: the classifier (the cached phase 1 fits its
      head, DANN a training wrapper around it).
    towers: the classifier's backbones (image first for fusion).
    strategy: the distribution strategy the model was built under.
    train: (inputs, label index) batches to fit on.
    validation: the same, held out: early stopping and each phase's
      `eval_accuracy` and `eval_loss` read only this.
    options: schedule, early stopping, class weights.
    callbacks: Keras callbacks for every fit.
  """

  model: keras.Model
  towers: List[model_lib.AnyBackbone]
  strategy: tf.distribute.Strategy
  train: tf.data.Dataset
  validation: tf.data.Dataset
  options: FitOptions
  callbacks: List[keras.callbacks.Callback] = dataclasses.field(
    default_factory=list
  )


class DivergenceGuard(keras.callbacks.Callback):
  """Raises TrainingDivergedError on the first NaN or infinite batch loss."""

  def __init__(self, phase: str):
    super().__init__()
    self.phase = phase
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss_value = (logs or {}).get('loss')
    if loss_value is not None and not math.isfinite(float(loss_value)):
      learning_rate = _current_learning_rate(self.model)
      raise TrainingDivergedError(
        f'{self.phase}: training diverged, the loss became {loss_value} at '
        f'epoch {self.epoch + 1}, batch {batch + 1}, learning rate '
        f'{learning_rate:.3g}. Lower the learning rate.'
      )


class LearningRateLog(keras.callbacks.Callback):
  """Logs `learning_rate`, the rate of each epoch's last step (schedules)."""

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs['learning_rate'] = _current_learning_rate(self.model)


def _current_learning_rate(model: keras.Model) -> float:
  """The rate of the last step (a mirrored variable under a strategy)."""
  return float(keras.backend.get_value(model.optimizer.learning_rate))


def fit_phase(
  context: PhaseContext, name: str, epochs: int, learning_rate: float
) -> dict:
  """Compiles `context.model` for the phase (in the strategy scope), fits it.

  Returns:
    `history` (per-epoch metrics; with a schedule, also `learning_rate`) and
    `early_stopping` (None when off, else `patience`, `stopped_early`,
    `epochs_run` and `best_epoch`, 1-based, whose weights the model keeps).
  """
  model, options = context.model, context.options
  rate = learning_rate
  if epochs > 0 and options.lr_schedule != schedules.CONSTANT:
    rate = schedules.learning_rate(
      options.lr_schedule,
      learning_rate,
      epochs,
      options.steps_per_epoch or _steps_per_epoch(context.train),
      options.lr_decay_rate,
      options.lr_warmup_epochs,
    )
  with context.strategy.scope():
    model_lib.compile_for_phase(model, rate)
  if epochs == 0:
    return {'history': {}, 'early_stopping': None}
  all_callbacks = [DivergenceGuard(name)]
  if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
    all_callbacks.append(LearningRateLog())  # Before TensorBoard, History.
  all_callbacks += context.callbacks
  stopper = None
  if options.early_stopping_patience:
    stopper = keras.callbacks.EarlyStopping(
      monitor='val_loss',
      patience=options.early_stopping_patience,
      restore_best_weights=True,
    )
    all_callbacks.append(stopper)
  history = model.fit(
    context.train,
    validation_data=context.validation,
    epochs=epochs,
    callbacks=all_callbacks,
    class_weight=options.class_weight,
    verbose=2,
  ).history
  early_stopping = None
  if stopper:
    early_stopping = {
      'patience': options.early_stopping_patience,
      'stopped_early': stopper.stopped_epoch > 0,
      'epochs_run': len(history['loss']),
      'best_epoch': stopper.best_epoch + 1,
    }
    print(
      f'[trainer] {name}: early stopping: ran {len(history["loss"])} of '
      f'{epochs} epochs, kept epoch {stopper.best_epoch + 1}',
      flush=True,
    )
  return {'history': history, 'early_stopping': early_stopping}


def _steps_per_epoch(dataset: tf.data.Dataset) -> int:
  """Batches per epoch: the cardinality when known, else one counting pass."""
  steps = int(dataset.cardinality())
  if steps < 0:
    steps = int(dataset.reduce(0, lambda count, _: count + 1))
  return steps


def run_phase(
  context: PhaseContext,
  name: str,
  epochs: int,
  learning_rate: float,
  fine_tune_layers: FineTuneLayers,
) -> dict:
  """Sets trainability, recompiles in the strategy scope, fits, evaluates.

  Args:
    context: the model, its towers, strategy, data, callbacks and options.
    name: the phase, for the log.
    epochs: epochs to fit (0: only evaluate).
    learning_rate: Adam's (the schedule's peak).
    fine_tune_layers: what to unfreeze (an int: the top N layers, 0 for
      none); one per tower, or one for all.

  Returns:
    What evaluate_phase returns.
  """
  towers = context.towers
  settings = (
    list(fine_tune_layers)
    if isinstance(fine_tune_layers, (list, tuple))
    else [fine_tune_layers] * len(towers)
  )
  if len(settings) != len(towers):
    raise ValueError(
      f'{len(towers)} backbones but fine_tune_layers {fine_tune_layers!r}.'
    )
  with context.strategy.scope():
    unfrozen = [
      layer
      for tower, setting in zip(towers, settings)
      for layer in model_lib.unfreeze(tower, setting)
    ]
  logging.info(
    '%s: %d epochs at lr=%g, %d trainable weights, unfrozen '
    'backbone layers: %s',
    name,
    epochs,
    learning_rate,
    len(context.model.trainable_weights),
    unfrozen,
  )
  fitted = fit_phase(context, name, epochs, learning_rate)
  return evaluate_phase(context, name, epochs, learning_rate, fitted, unfrozen)


def evaluate_phase(
  context: PhaseContext,
  name: str,
  epochs: int,
  learning_rate: float,
  fitted: dict,
  unfrozen: List[str],
) -> dict:
  """Evaluates the compiled model on `context.validation`; the phase's result.

  `fitted` is what fit_phase returned; `unfrozen`, the backbone layers the
  phase trained.
  """
  eval_loss, eval_accuracy = context.model.evaluate(
    context.validation, verbose=0
  )
  stopping = fitted['early_stopping']
  trained = (
    f'after {epochs} epochs'
    if not stopping
    else f'with epoch {stopping["best_epoch"]} of {stopping["epochs_run"]} '
    f'run (cap {epochs})'
  )
  print(
    f'[trainer] {name}: validation accuracy {eval_accuracy:.4f} '
    f'(loss {eval_loss:.4f}) {trained}',
    flush=True,
  )
  return {
    'epochs': epochs,
    'learning_rate': learning_rate,
    'history': {
      k: [float(v) for v in vs] for k, vs in fitted['history'].items()
    },
    'eval_accuracy': float(eval_accuracy),
    'eval_loss': float(eval_loss),
    'unfrozen_layers': unfrozen,
    'early_stopping': fitted['early_stopping'],
  }

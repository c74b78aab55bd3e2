"""The classifiers and their transfer-learning phases.

Image, text and image+text (fusion) classifiers share one head: the pooled
backbone features (for fusion, both towers' concatenated) go through dropout
and a dense layer (float32 even under mixed precision). Phase 1 (feature
extraction) trains the head on frozen backbones. Fine-tuning follows: one
phase (phase 2) or several (progressive unfreezing, `phases`), each
unfreezing the top of each backbone (`Unfreeze`: top N layers, from a named
layer, or a fraction) and training at its own learning rate. In every phase
the backbones are called with `training=False` and BatchNormalization layers
stay frozen, so their moving statistics never change (small fine-tuning
batches would wreck them). All phases use the same loss on logits; softmax
is applied only at serving. Every fit is guarded: a NaN or infinite training
loss raises TrainingDivergedError at once.
"""

import contextlib
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Union

from absl import logging
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import features
from modules import schedules
from pipeline import settings as settings_lib

HEAD_DROPOUT, LOGITS, FUSION = 'head_dropout', 'logits', 'fusion'
AnyBackbone = Union[backbones.Backbone, backbones.TextBackbone]
# One backbone, or one per tower (image first for fusion).
Towers = Union[AnyBackbone, Sequence[AnyBackbone]]


class TrainingDivergedError(RuntimeError):
  """A phase's training loss became NaN or infinite; nothing may be pushed."""


@contextlib.contextmanager
def precision_policy(name: str):
  """Sets Keras' global dtype policy (e.g. mixed_float16) for the block.

  Build, train and export inside it; the previous policy is restored after,
  so nothing else in the process inherits it.
  """
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def loss() -> keras.losses.Loss:
  """The one loss used in both phases: the head outputs logits."""
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_classifier(
  backbone: backbones.Backbone,
  image_size: int,
  num_classes: int,
  dropout: float,
  augmentation: Optional[keras.layers.Layer] = None,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Backbone + dropout + dense head; inputs are [0, 255] float images.

  `augmentation` (modules/augmentation.py) goes before the backbone;
  `weight_decay` is the head kernel's L2 penalty (see `head`).
  """
  inputs = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  features_ = _image_features(backbone, inputs, augmentation)
  return keras.Model(
    inputs,
    head(features_, num_classes, dropout, weight_decay),
    name=f'{backbone.name}_classifier',
  )


def build_text_classifier(
  backbone: backbones.TextBackbone,
  max_length: int,
  num_classes: int,
  dropout: float,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Text encoder + dropout + dense head; inputs are transformed text."""
  inputs = backbone.inputs(max_length)
  return keras.Model(
    inputs,
    head(backbone.embed(inputs), num_classes, dropout, weight_decay),
    name='text_classifier',
  )


def build_fusion_classifier(
  image_backbone: backbones.Backbone,
  text_backbone: backbones.TextBackbone,
  image_size: int,
  max_length: int,
  num_classes: int,
  dropout: float,
  augmentation: Optional[keras.layers.Layer] = None,
  weight_decay: float = 0.0,
) -> keras.Model:
  """Both towers' pooled features, concatenated, + dropout + dense head."""
  image = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  inputs = {features.IMAGE_XF: image, **text_backbone.inputs(max_length)}
  fused = keras.layers.Concatenate(name=FUSION, dtype='float32')(
    [
      _image_features(image_backbone, image, augmentation),
      text_backbone.embed(inputs),
    ]
  )
  return keras.Model(
    inputs,
    head(fused, num_classes, dropout, weight_decay),
    name='image_text_classifier',
  )


def _image_features(backbone: backbones.Backbone, images, augmentation):
  if augmentation is not None:
    images = augmentation(images)
  x = keras.layers.Lambda(backbone.preprocess, name='preprocess')(images)
  return backbone.network(x, training=False)


def head(x, num_classes: int, dropout: float, weight_decay: float = 0.0):
  """Dropout, then the dense logits layer.

  `weight_decay` (lambda) adds lambda * sum(kernel**2) to the training loss,
  the penalty modules/linear_probe.py's closed-form start minimizes too.
  """
  x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
  regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
  # float32 logits under mixed precision: a stable softmax and loss.
  return keras.layers.Dense(
    num_classes, name=LOGITS, dtype='float32', kernel_regularizer=regularizer
  )(x)


def as_list(towers: Towers) -> List[AnyBackbone]:
  return list(towers) if isinstance(towers, (list, tuple)) else [towers]


def freeze_backbone(backbone: Towers) -> None:
  for tower in as_list(backbone):
    tower.network.trainable = False


def unfreeze_top(backbone: AnyBackbone, num_layers: int) -> List[str]:
  """Makes the top `num_layers` backbone layers trainable, except BatchNorm."""
  return unfreeze(backbone, settings_lib.Unfreeze(top=num_layers))


def unfreeze(
  backbone: AnyBackbone, setting: Union[int, settings_lib.Unfreeze]
) -> List[str]:
  """Makes the layers `setting` names trainable (an int: the top N), except
  BatchNorm; freezes the rest.

  Returns:
    The names of the layers with weights that are trainable afterwards.
  """
  if isinstance(setting, int):
    setting = settings_lib.Unfreeze(top=setting)
  layers = backbone.layers
  first_trainable = setting.first_trainable(layers)
  if first_trainable >= len(layers):
    freeze_backbone(backbone)
    return []
  backbone.network.trainable = True
  for i, layer in enumerate(layers):
    layer.trainable = i >= first_trainable and not isinstance(
      layer, keras.layers.BatchNormalization
    )
  return [layer.name for layer in layers if layer.trainable and layer.weights]


def compile_for_phase(
  model: keras.Model, learning_rate: schedules.LearningRate
) -> None:
  """(Re)compiles; call inside the strategy scope after changing trainability.

  Under the mixed_float16 policy Keras wraps Adam in a LossScaleOptimizer.
  """
  model.compile(
    optimizer=keras.optimizers.Adam(learning_rate),
    loss=loss(),
    metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
  )


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
  name: str,
  model: keras.Model,
  strategy: tf.distribute.Strategy,
  train_dataset: tf.data.Dataset,
  eval_dataset: tf.data.Dataset,
  epochs: int,
  learning_rate: float,
  callbacks: Optional[list],
  options: FitOptions,
) -> dict:
  """Compiles `model` for the phase (in the strategy scope) and fits it.

  Returns:
    `history` (per-epoch metrics; with a schedule, also `learning_rate`) and
    `early_stopping` (None when off, else `patience`, `stopped_early`,
    `epochs_run` and `best_epoch`, 1-based, whose weights the model keeps).
  """
  rate = learning_rate
  if epochs > 0 and options.lr_schedule != schedules.CONSTANT:
    rate = schedules.learning_rate(
      options.lr_schedule,
      learning_rate,
      epochs,
      options.steps_per_epoch or _steps_per_epoch(train_dataset),
      options.lr_decay_rate,
      options.lr_warmup_epochs,
    )
  with strategy.scope():
    compile_for_phase(model, rate)
  if epochs == 0:
    return {'history': {}, 'early_stopping': None}
  all_callbacks = [DivergenceGuard(name)]
  if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
    all_callbacks.append(LearningRateLog())  # Before TensorBoard, History.
  all_callbacks += callbacks or []
  stopper = None
  if options.early_stopping_patience:
    stopper = keras.callbacks.EarlyStopping(
      monitor='val_loss',
      patience=options.early_stopping_patience,
      restore_best_weights=True,
    )
    all_callbacks.append(stopper)
  history = model.fit(
    train_dataset,
    validation_data=eval_dataset,
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
  name: str,
  model: keras.Model,
  backbone: Towers,
  strategy: tf.distribute.Strategy,
  train_dataset: tf.data.Dataset,
  eval_dataset: tf.data.Dataset,
  epochs: int,
  learning_rate: float,
  fine_tune_layers: Union[
    int, settings_lib.Unfreeze, Sequence[Union[int, settings_lib.Unfreeze]]
  ],
  callbacks: Optional[list] = None,
  options: Optional[FitOptions] = None,
) -> dict:
  """Sets trainability, recompiles in the strategy scope, fits, evaluates.

  Args:
    name: the phase, for the log.
    model: the classifier.
    backbone: its backbone, or its towers' (image first for fusion).
    strategy: the distribution strategy the model was built under.
    train_dataset: (inputs, label index) batches.
    eval_dataset: the same, for validation.
    epochs: epochs to fit (0: only evaluate).
    learning_rate: Adam's (the schedule's peak).
    fine_tune_layers: what to unfreeze (an int: the top N layers, 0 for
      none); one per tower, or one for all.
    callbacks: Keras callbacks for fit.
    options: schedule, early stopping, class weights (default: none).

  Returns:
    What evaluate_phase returns.
  """
  towers = as_list(backbone)
  settings = (
    list(fine_tune_layers)
    if isinstance(fine_tune_layers, (list, tuple))
    else [fine_tune_layers] * len(towers)
  )
  if len(settings) != len(towers):
    raise ValueError(
      f'{len(towers)} backbones but fine_tune_layers {fine_tune_layers!r}.'
    )
  with strategy.scope():
    unfrozen = [
      name
      for tower, setting in zip(towers, settings)
      for name in unfreeze(tower, setting)
    ]
  logging.info(
    '%s: %d epochs at lr=%g, %d trainable weights, unfrozen '
    'backbone layers: %s',
    name,
    epochs,
    learning_rate,
    len(model.trainable_weights),
    unfrozen,
  )
  fitted = fit_phase(
    name,
    model,
    strategy,
    train_dataset,
    eval_dataset,
    epochs,
    learning_rate,
    callbacks,
    options or FitOptions(),
  )
  return evaluate_phase(
    name,
    model,
    eval_dataset,
    epochs,
    learning_rate,
    fitted['history'],
    unfrozen,
    fitted['early_stopping'],
  )


def evaluate_phase(
  name: str,
  model: keras.Model,
  eval_dataset: tf.data.Dataset,
  epochs: int,
  learning_rate: float,
  history: dict,
  unfrozen: List[str],
  early_stopping: Optional[dict] = None,
) -> dict:
  """Evaluates the compiled classifier; the per-phase result.

  `eval_dataset` is what the phase validated on (the Trainer's validation
  part of the train split).
  """
  eval_loss, eval_accuracy = model.evaluate(eval_dataset, verbose=0)
  print(
    f'[trainer] {name}: validation accuracy {eval_accuracy:.4f} '
    f'(loss {eval_loss:.4f}) after {epochs} epochs',
    flush=True,
  )
  return {
    'epochs': epochs,
    'learning_rate': learning_rate,
    'history': {k: [float(v) for v in vs] for k, vs in history.items()},
    'eval_accuracy': float(eval_accuracy),
    'eval_loss': float(eval_loss),
    'unfrozen_layers': unfrozen,
    'early_stopping': early_stopping,
  }

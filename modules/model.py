"""The classifier and its two-phase transfer-learning schedule.

Phase 1 (feature extraction) trains a new head on a frozen backbone. Phase 2
(fine-tuning) unfreezes the top `fine_tune_layers` layers of the backbone and
trains them with a lower learning rate. In both phases the backbone is called
with `training=False` and its BatchNormalization layers stay frozen, so their
moving statistics never change (small fine-tuning batches would wreck them).
Both phases use the same loss on logits; softmax is applied only at serving.
"""

import dataclasses
from typing import List, Optional

from absl import logging
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import features

HEAD_DROPOUT, LOGITS = 'head_dropout', 'logits'


@dataclasses.dataclass
class TrainingConfig:
  """Hyperparameters of the two phases; see README for the defaults' reasons."""
  phase1_epochs: int = 5
  phase1_learning_rate: float = 1e-3
  phase2_epochs: int = 2
  phase2_learning_rate: float = 1e-4
  fine_tune_layers: int = 20
  dropout: float = 0.2
  seed: int = 42
  # Phase 1 trains the head on embeddings computed once (embedding_cache.py).
  phase1_cache: bool = True


def loss() -> keras.losses.Loss:
  """The one loss used in both phases: the head outputs logits."""
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_classifier(backbone: backbones.Backbone, image_size: int,
                     num_classes: int, dropout: float) -> keras.Model:
  """Backbone + dropout + dense head; inputs are [0, 255] float images."""
  inputs = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  x = keras.layers.Lambda(backbone.preprocess, name='preprocess')(inputs)
  x = backbone.network(x, training=False)
  x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
  logits = keras.layers.Dense(num_classes, name=LOGITS)(x)
  return keras.Model(inputs, logits, name=f'{backbone.name}_classifier')


def freeze_backbone(backbone: backbones.Backbone) -> None:
  backbone.network.trainable = False


def unfreeze_top(backbone: backbones.Backbone, num_layers: int) -> List[str]:
  """Makes the top `num_layers` backbone layers trainable, except BatchNorm.

  Returns:
    The names of the layers that are trainable afterwards.
  """
  if num_layers <= 0:
    freeze_backbone(backbone)
    return []
  backbone.network.trainable = True
  layers = backbone.layers
  first_trainable = max(0, len(layers) - num_layers)
  for i, layer in enumerate(layers):
    layer.trainable = (
        i >= first_trainable and
        not isinstance(layer, keras.layers.BatchNormalization))
  return [layer.name for layer in layers if layer.trainable and layer.weights]


def compile_for_phase(model: keras.Model, learning_rate: float) -> None:
  """(Re)compiles; call inside the strategy scope after changing trainability."""
  model.compile(
      optimizer=keras.optimizers.Adam(learning_rate),
      loss=loss(),
      metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')])


def run_phase(
    name: str,
    model: keras.Model,
    backbone: backbones.Backbone,
    strategy: tf.distribute.Strategy,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    fine_tune_layers: int,
    callbacks: Optional[list] = None) -> dict:
  """Sets trainability, recompiles in the strategy scope, fits, evaluates.

  Returns:
    The Keras `history` (per-epoch metrics), the final `eval_accuracy` and
    `eval_loss`, and the names of the `unfrozen_layers` of the backbone.
  """
  with strategy.scope():
    unfrozen = unfreeze_top(backbone, fine_tune_layers)
    compile_for_phase(model, learning_rate)
  logging.info('%s: %d epochs at lr=%g, %d trainable weights, unfrozen '
               'backbone layers: %s', name, epochs, learning_rate,
               len(model.trainable_weights), unfrozen)
  history = {}
  if epochs > 0:
    history = model.fit(
        train_dataset, validation_data=eval_dataset, epochs=epochs,
        callbacks=callbacks, verbose=2).history
  return evaluate_phase(name, model, eval_dataset, epochs, learning_rate,
                        history, unfrozen)


def evaluate_phase(name: str, model: keras.Model,
                   eval_dataset: tf.data.Dataset, epochs: int,
                   learning_rate: float, history: dict,
                   unfrozen: List[str]) -> dict:
  """Evaluates the compiled classifier on images; the per-phase result."""
  eval_loss, eval_accuracy = model.evaluate(eval_dataset, verbose=0)
  print(f'[trainer] {name}: eval accuracy {eval_accuracy:.4f} '
        f'(loss {eval_loss:.4f}) after {epochs} epochs', flush=True)
  return {
      'epochs': epochs,
      'learning_rate': learning_rate,
      'history': {k: [float(v) for v in vs] for k, vs in history.items()},
      'eval_accuracy': float(eval_accuracy),
      'eval_loss': float(eval_loss),
      'unfrozen_layers': unfrozen,
  }

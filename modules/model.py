"""The classifiers and their two-phase transfer-learning schedule.

Image, text and image+text (fusion) classifiers share one head: the pooled
backbone features (for fusion, both towers' concatenated) go through dropout
and a dense layer. Phase 1 (feature extraction) trains the head on frozen
backbones. Phase 2 (fine-tuning) unfreezes the top layers of each backbone,
its own count per tower, and trains them with a lower learning rate. In both
phases the backbones are called with `training=False` and BatchNormalization
layers stay frozen, so their moving statistics never change (small
fine-tuning batches would wreck them). Both phases use the same loss on
logits; softmax is applied only at serving.
"""

import dataclasses
from typing import List, Optional, Sequence, Union

from absl import logging
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import features

HEAD_DROPOUT, LOGITS, FUSION = 'head_dropout', 'logits', 'fusion'
AnyBackbone = Union[backbones.Backbone, backbones.TextBackbone]
# One backbone, or one per tower (image first for fusion).
Towers = Union[AnyBackbone, Sequence[AnyBackbone]]


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
  return keras.Model(
      inputs, _head(_image_features(backbone, inputs), num_classes, dropout),
      name=f'{backbone.name}_classifier')


def build_text_classifier(backbone: backbones.TextBackbone, max_length: int,
                          num_classes: int, dropout: float) -> keras.Model:
  """Text encoder + dropout + dense head; inputs are transformed text."""
  inputs = backbone.inputs(max_length)
  return keras.Model(
      inputs, _head(backbone.embed(inputs), num_classes, dropout),
      name='text_classifier')


def build_fusion_classifier(image_backbone: backbones.Backbone,
                            text_backbone: backbones.TextBackbone,
                            image_size: int, max_length: int,
                            num_classes: int, dropout: float) -> keras.Model:
  """Both towers' pooled features, concatenated, + dropout + dense head."""
  image = keras.Input((image_size, image_size, 3), name=features.IMAGE_XF)
  inputs = {features.IMAGE_XF: image, **text_backbone.inputs(max_length)}
  fused = keras.layers.Concatenate(name=FUSION)([
      _image_features(image_backbone, image), text_backbone.embed(inputs)])
  return keras.Model(inputs, _head(fused, num_classes, dropout),
                     name='image_text_classifier')


def _image_features(backbone: backbones.Backbone, images):
  x = keras.layers.Lambda(backbone.preprocess, name='preprocess')(images)
  return backbone.network(x, training=False)


def _head(x, num_classes: int, dropout: float):
  x = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(x)
  return keras.layers.Dense(num_classes, name=LOGITS)(x)


def as_list(towers: Towers) -> List[AnyBackbone]:
  return list(towers) if isinstance(towers, (list, tuple)) else [towers]


def freeze_backbone(backbone: Towers) -> None:
  for tower in as_list(backbone):
    tower.network.trainable = False


def unfreeze_top(backbone: AnyBackbone, num_layers: int) -> List[str]:
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
    backbone: Towers,
    strategy: tf.distribute.Strategy,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    epochs: int,
    learning_rate: float,
    fine_tune_layers: Union[int, Sequence[int]],
    callbacks: Optional[list] = None) -> dict:
  """Sets trainability, recompiles in the strategy scope, fits, evaluates.

  Args:
    name: the phase, for the log.
    model: the classifier.
    backbone: its backbone, or its towers' (image first for fusion).
    strategy: the distribution strategy the model was built under.
    train_dataset: (inputs, label index) batches.
    eval_dataset: the same, for validation.
    epochs: epochs to fit (0: only evaluate).
    learning_rate: Adam's.
    fine_tune_layers: top layers to unfreeze; one count per tower.
    callbacks: Keras callbacks for fit.

  Returns:
    The Keras `history` (per-epoch metrics), the final `eval_accuracy` and
    `eval_loss`, and the names of the `unfrozen_layers` of the backbones.
  """
  towers = as_list(backbone)
  counts = (list(fine_tune_layers) if isinstance(fine_tune_layers,
                                                 (list, tuple)) else
            [fine_tune_layers] * len(towers))
  if len(counts) != len(towers):
    raise ValueError(f'{len(towers)} backbones but fine_tune_layers '
                     f'{fine_tune_layers!r}.')
  with strategy.scope():
    unfrozen = [name for tower, count in zip(towers, counts)
                for name in unfreeze_top(tower, count)]
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
  """Evaluates the compiled classifier; the per-phase result."""
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

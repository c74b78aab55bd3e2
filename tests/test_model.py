"""The two-phase schedule: what each phase may and may not change.

Phase 1 changes only the head; phase 2 changes the unfrozen top backbone
layers and nothing below them; BatchNorm gamma, beta and moving statistics
are unchanged; both phases use one logits loss; Keras is tf_keras. Also: an
unknown backbone is a clear error, and local `file:` backbones (a SavedModel
directory, a .keras model) train.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from modules import backbones
from modules import model as model_lib
from modules import phases

IMAGE_SIZE = 32


def _toy_dataset(n=64, batch=16, seed=0):
  """Two classes told apart by brightness: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  images = (
    rng.uniform(0, 100, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
    + 150 * labels[:, None, None, None]
  )
  return tf.data.Dataset.from_tensor_slices(
    (images.astype('float32'), labels.astype('int64'))
  ).batch(batch)


def _snapshot(layers):
  return {w.name: w.numpy().copy() for layer in layers for w in layer.weights}


def _changed(before, after):
  return {
    name for name in before if not np.array_equal(before[name], after[name])
  }


@pytest.fixture(scope='module')
def trained_phases():
  keras.utils.set_random_seed(1)
  strategy = tf.distribute.get_strategy()
  # Pretrained weights: a random MobileNet with BatchNorm in inference mode
  # outputs ~1e-21 features, so its head would not learn at all.
  backbone = backbones.build_backbone('MobileNet', IMAGE_SIZE, 'offline')
  classifier = model_lib.build_classifier(backbone, IMAGE_SIZE, 2, dropout=0.0)
  data = _toy_dataset()
  snapshots = [_snapshot(classifier.layers)]
  bn_layers = [
    l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)
  ]
  context = phases.PhaseContext(
    classifier, [backbone], strategy, data, data, phases.FitOptions()
  )
  phase1 = phases.run_phase(
    context,
    'phase1',
    epochs=2,
    learning_rate=1e-2,
    fine_tune_layers=0,
  )
  snapshots.append(_snapshot(classifier.layers))
  phase2 = phases.run_phase(
    context,
    'phase2',
    epochs=2,
    learning_rate=1e-3,
    fine_tune_layers=12,
  )
  snapshots.append(_snapshot(classifier.layers))
  return backbone, classifier, bn_layers, snapshots, phase1, phase2


def test_phase1_trains_only_the_head(trained_phases):
  backbone, classifier, _, (initial, after1, _), _, _ = trained_phases
  changed = _changed(initial, after1)
  head = {w.name for w in classifier.get_layer('logits').weights}
  assert changed == head


def test_phase2_changes_top_backbone_layers_and_keeps_batchnorm(trained_phases):
  backbone, classifier, bn_layers, (_, after1, after2), _, phase2 = (
    trained_phases
  )
  changed = _changed(after1, after2)
  unfrozen = set(phase2['unfrozen_layers'])
  assert unfrozen, 'phase 2 unfroze nothing'
  top_weights = {
    w.name for l in backbone.layers if l.name in unfrozen for w in l.weights
  }
  # Every unfrozen backbone weight moved; nothing below them did.
  assert top_weights <= changed
  frozen_backbone = {
    w.name for l in backbone.layers if l.name not in unfrozen for w in l.weights
  }
  assert not frozen_backbone & changed
  # BatchNorm (gamma, beta and moving statistics) is identical after phase 2.
  bn_weights = {w.name for l in bn_layers for w in l.weights}
  assert bn_weights and not bn_weights & changed
  assert not any(
    isinstance(backbone.network.get_layer(n), keras.layers.BatchNormalization)
    for n in unfrozen
  )


def test_both_phases_use_one_logits_loss(trained_phases):
  _, classifier, _, _, phase1, phase2 = trained_phases
  assert isinstance(classifier.loss, keras.losses.SparseCategoricalCrossentropy)
  assert classifier.loss.get_config()['from_logits'] is True
  assert classifier.layers[-1].activation is keras.activations.linear
  for phase in (phase1, phase2):
    assert phase['history']['loss'][-1] < phase['history']['loss'][0]


def test_keras_is_tf_keras():
  # tf.keras must be tf_keras (its module name can change once tensorflow_hub
  # is imported, so compare the classes).
  assert tf.keras.Model is keras.Model and tf.keras.layers.Dense is (
    keras.layers.Dense
  )
  assert isinstance(
    backbones.build_backbone('MobileNet', 32, 'none').network, keras.Model
  )


def test_unknown_backbone_is_a_clear_error():
  with pytest.raises(ValueError, match='Unknown backbone'):
    backbones.build_backbone('NotANet', 32)
  with pytest.raises(ValueError, match='only for MobileNet'):
    backbones.build_backbone('MobileNetV2', 32, weights='offline')


@pytest.mark.parametrize('kind', ['savedmodel', 'keras'])
def test_local_model_backbones(tmp_path, kind):
  """`file:` backbones: a SavedModel dir (Hub-style) or a .keras model."""
  source = keras.applications.MobileNet(
    include_top=False, weights=None, input_shape=(32, 32, 3), pooling='avg'
  )
  if kind == 'savedmodel':
    path = str(tmp_path / 'backbone')
    tf.saved_model.save(source, path)
  else:
    path = str(tmp_path / 'backbone.keras')
    source.save(path)
  backbone = backbones.build_backbone(f'file:{path}', 32)
  classifier = model_lib.build_classifier(backbone, 32, 3, 0.0)
  assert classifier(np.zeros((2, 32, 32, 3), 'float32')).shape == (2, 3)

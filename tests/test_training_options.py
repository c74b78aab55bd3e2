"""Training options: progressive unfreezing, LR schedules, early stopping,
class weights, augmentation, mixed precision and the NaN guard.

Each progressive-unfreezing phase (top N, from a block, a fraction) changes
exactly the head plus that phase's weights, and BatchNorm never changes;
`fine_tune_from` / `fine_tune_fraction` on MobileNet; the schedules'
learning rates at given steps; early stopping stops and restores the best
epoch; balanced and explicit class weights, and the weighted loss is the one
`fit` reports; the NaN guard under MirroredStrategy; augmentation changes
images in training and is the identity at serving, also in an exported,
reloaded SavedModel; mixed precision under MirroredStrategy with the cached
phase 1 (float16 compute, float32 variables and outputs, a
LossScaleOptimizer, finite losses, the policy restored); bad settings name
their key.

Tiny models (a 3-block conv backbone with BatchNorm, random init) keep this
file fast; the real MobileNet path is covered by test_model.py.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from modules import augmentation
from modules import backbones
from modules import model as model_lib
from modules import phases
from modules import schedules
from modules import trainer
from pipeline import settings as settings_lib

IMAGE_SIZE = 16
BLOCKS = 3


def _tiny_backbone() -> backbones.Backbone:
  """input, then (conv, BatchNorm, ReLU) x 3, then pooling: 11 layers."""
  inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
  x = inputs
  for block in range(1, BLOCKS + 1):
    x = keras.layers.Conv2D(4, 3, padding='same', name=f'block{block}_conv')(x)
    x = keras.layers.BatchNormalization(name=f'block{block}_bn')(x)
    x = keras.layers.ReLU(name=f'block{block}_relu')(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  return backbones.Backbone(
    'tiny',
    keras.Model(inputs, x, name='tiny'),
    lambda images: images / 127.5 - 1,
  )


def _images(n=32, batch=8, seed=0, num_classes=2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  images = (
    rng.uniform(0, 120, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
    + 120 * labels[:, None, None, None]
  )
  return tf.data.Dataset.from_tensor_slices(
    (images.astype('float32'), labels.astype('int64'))
  ).batch(batch)


def _snapshot(model):
  return {w.name: w.numpy().copy() for w in model.weights}


def _changed(before, after):
  return {n for n in before if not np.array_equal(before[n], after[n])}


class _SnapshotAfterEachFit(keras.callbacks.Callback):
  """Records the classifier's weights when each phase's fit ends."""

  def __init__(self, classifier):
    super().__init__()
    self.classifier = classifier
    self.snapshots = [_snapshot(classifier)]

  def on_train_end(self, logs=None):
    self.snapshots.append(_snapshot(self.classifier))


def _conv_weights(*blocks):
  return {f'block{b}_conv/{w}:0' for b in blocks for w in ('kernel', 'bias')}


def test_progressive_unfreezing_changes_exactly_each_phases_layers():
  keras.utils.set_random_seed(0)
  backbone = _tiny_backbone()
  classifier = model_lib.build_classifier(backbone, IMAGE_SIZE, 2, 0.0)
  config = settings_lib.TrainerConfig.from_dict(
    {
      'phase1_epochs': 1,
      'batch_size': 8,
      'phases': [
        {'epochs': 1, 'learning_rate': 1e-2, 'fine_tune_layers': 4},
        {'epochs': 1, 'learning_rate': 1e-2, 'fine_tune_from': 'block2'},
        {'epochs': 1, 'learning_rate': 1e-2, 'fine_tune_fraction': 0.9},
      ],
    }
  )
  recorder = _SnapshotAfterEachFit(classifier)
  context = phases.PhaseContext(
    classifier,
    [backbone],
    tf.distribute.get_strategy(),
    _images(),
    _images(seed=1),
    phases.FitOptions.from_config(config),
    callbacks=[recorder],
  )
  results = trainer.train_phases(context, config)

  assert list(results) == ['phase1', 'phase2', 'phase3', 'phase4']
  assert results['phase1']['embedding_cache'] == 'used'
  head = {'logits/kernel:0', 'logits/bias:0'}
  # Top 4 of 11 layers: block3's conv (its BatchNorm stays frozen); from
  # `block2` (a block prefix): blocks 2-3; the top 90% (10 layers): all.
  expected = [
    (set(), head),
    (['block3_conv'], head | _conv_weights(3)),
    (['block2_conv', 'block3_conv'], head | _conv_weights(2, 3)),
    (
      ['block1_conv', 'block2_conv', 'block3_conv'],
      head | _conv_weights(1, 2, 3),
    ),
  ]
  snapshots = recorder.snapshots
  assert len(snapshots) == 5
  for i, (name, (layers, weights)) in enumerate(zip(results, expected)):
    assert results[name]['unfrozen_layers'] == list(layers), name
    assert _changed(snapshots[i], snapshots[i + 1]) == weights, name
  # BatchNorm (gamma, beta, moving statistics) never moved.
  bn = {n for n in snapshots[0] if '_bn/' in n}
  assert len(bn) == 4 * BLOCKS
  for name in bn:
    np.testing.assert_array_equal(snapshots[0][name], snapshots[-1][name])


def test_unfreeze_settings_on_mobilenet_and_bad_names():
  backbone = backbones.build_backbone('MobileNet', 32, 'none')
  layers = backbone.layers
  names = model_lib.unfreeze(
    backbone, settings_lib.Unfreeze(from_layer='conv_pw_13')
  )
  start = [l.name for l in layers].index('conv_pw_13')
  assert names == [
    l.name
    for l in layers[start:]
    if l.weights and not isinstance(l, keras.layers.BatchNormalization)
  ]
  assert names == ['conv_pw_13']
  # 87 layers: the top 25% is 22 (rounded up), from conv_pw_10_bn up.
  assert len(layers) == 87 and layers[-22].name == 'conv_pw_10_bn'
  names = model_lib.unfreeze(backbone, settings_lib.Unfreeze(fraction=0.25))
  assert names == [
    'conv_dw_11',
    'conv_pw_11',
    'conv_dw_12',
    'conv_pw_12',
    'conv_dw_13',
    'conv_pw_13',
  ]
  assert not any(
    isinstance(l, keras.layers.BatchNormalization) and l.trainable
    for l in layers
  )
  with pytest.raises(ValueError, match="no backbone layer .* 'block9'"):
    model_lib.unfreeze(backbone, settings_lib.Unfreeze(from_layer='block9'))


def test_lr_schedule_values():
  assert schedules.learning_rate('constant', 1e-3, 3, None, 0.5, 0) == 1e-3
  exponential = schedules.learning_rate('exponential', 1e-3, 3, 10, 0.5, 0)
  for step, expected in (
    (0, 1e-3),
    (10, 5e-4),
    (20, 2.5e-4),
    (5, 1e-3 * 0.5**0.5),
  ):
    assert float(exponential(step)) == pytest.approx(expected, rel=1e-5)
  # 3 epochs of 10 steps: linear warm-up over 10, cosine decay over 20.
  cosine = schedules.learning_rate('cosine', 1e-3, 3, 10, 0.9, 1.0)
  for step, expected in (
    (0, 0.0),
    (5, 5e-4),
    (10, 1e-3),
    (20, 5e-4),
    (30, 0.0),
  ):
    assert float(cosine(step)) == pytest.approx(expected, abs=1e-9), step
  no_warmup = schedules.learning_rate('cosine', 1e-3, 2, 10, 0.9, 0.0)
  assert float(no_warmup(0)) == pytest.approx(1e-3)
  assert float(no_warmup(10)) == pytest.approx(5e-4)


def _dense_model(num_features=4, seed=0):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((num_features,))
  return keras.Model(inputs, keras.layers.Dense(2, name='logits')(inputs))


def _points(n, seed, flip_labels=False):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  points = rng.normal(size=(n, 4)) + 2.0 * labels[:, None]
  if flip_labels:
    labels = 1 - labels
  return tf.data.Dataset.from_tensor_slices(
    (points.astype('float32'), labels.astype('int64'))
  ).batch(16)


def test_early_stopping_stops_and_restores_the_best_epoch():
  model = _dense_model()
  # Eval labels are the train labels flipped: val_loss rises as training
  # improves, so the best epoch is an early one.
  train, evaluate = _points(64, 0), _points(64, 1, flip_labels=True)
  context = phases.PhaseContext(
    model,
    [],
    tf.distribute.get_strategy(),
    train,
    evaluate,
    phases.FitOptions(early_stopping_patience=2),
  )
  fitted = phases.fit_phase(context, 'phase1', epochs=20, learning_rate=5e-2)
  val_loss = fitted['history']['val_loss']
  stopping = fitted['early_stopping']
  assert stopping['stopped_early'] and stopping['epochs_run'] < 20
  assert stopping['epochs_run'] == len(val_loss)
  assert stopping['best_epoch'] == int(np.argmin(val_loss)) + 1
  # The model keeps the best epoch's weights, not the last epoch's.
  restored_loss, _ = model.evaluate(evaluate, verbose=0)
  assert restored_loss == pytest.approx(min(val_loss), rel=1e-5)
  assert restored_loss < val_loss[-1]


def test_balanced_and_explicit_class_weights():
  names = ['bag', 'shoe', 'hat']
  weights = trainer.class_weights('balanced', names, np.array([6, 2, 0]))
  # n / (classes x n_class); a class without train examples weighs 1.
  assert weights == {0: pytest.approx(8 / 18), 1: pytest.approx(8 / 6), 2: 1.0}
  assert trainer.class_weights({'shoe': 3}, names, None) == {
    0: 1.0,
    1: 3.0,
    2: 1.0,
  }
  assert trainer.class_weights('none', names, None) is None
  with pytest.raises(ValueError, match=r"unknown class\(es\) \['boot'\]"):
    trainer.class_weights({'boot': 2.0}, names, None)


def test_class_weights_weight_the_training_loss():
  dataset = _points(16, 2)
  points, labels = next(iter(dataset))
  weight = {0: 1.0, 1: 3.0}
  model = _dense_model(seed=3)
  per_example = keras.losses.SparseCategoricalCrossentropy(
    from_logits=True, reduction='none'
  )(labels, model(points))
  sample_weights = tf.gather([weight[0], weight[1]], labels)
  expected = float(tf.reduce_sum(per_example * sample_weights)) / 16
  context = phases.PhaseContext(
    model,
    [],
    tf.distribute.get_strategy(),
    dataset,
    dataset,
    phases.FitOptions(class_weight=weight),
  )
  fitted = phases.fit_phase(context, 'phase1', 1, 1e-3)
  # One batch: the epoch's loss is that batch's, before the update.
  assert fitted['history']['loss'][0] == pytest.approx(expected, rel=1e-5)


def test_nan_guard_stops_a_diverging_phase():
  # As in the Trainer: under MirroredStrategy (mirrored optimizer variables).
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  with strategy.scope():
    model = _dense_model()
  with pytest.raises(
    phases.TrainingDivergedError,
    match=r'phase3: .* epoch 1, batch \d+, learning rate '
    r'1e\+38',
  ):
    phases.fit_phase(
      phases.PhaseContext(
        model,
        [],
        strategy,
        _points(256, 0),
        _points(32, 1),
        phases.FitOptions(),
      ),
      'phase3',
      5,
      1e38,
    )


def test_augmentation_trains_on_augmented_views_and_serves_unchanged(tmp_path):
  settings = {
    'flip': 'horizontal',
    'rotation': 0.1,
    'zoom': 0.2,
    'contrast': 0.3,
    'crop': 0.8,
  }
  images = next(iter(_images(8)))[0]
  for key, value in settings.items():
    block = augmentation.build({key: value}, seed=1)
    assert not np.allclose(block(images, training=True), images), key
    np.testing.assert_array_equal(block(images, training=False), images)

  keras.utils.set_random_seed(0)
  backbone = _tiny_backbone()
  block = augmentation.build(settings, seed=1)
  classifier = model_lib.build_classifier(backbone, IMAGE_SIZE, 2, 0.0, block)
  assert [l.name for l in classifier.layers[:3]] == [
    'image_xf',
    'augmentation',
    'preprocess',
  ]
  served = classifier(images, training=False)
  # Dropout is 0, so only augmentation can make training calls differ.
  assert not np.allclose(classifier(images, training=True), served)
  np.testing.assert_array_equal(classifier(images), served)
  unaugmented = keras.Model(
    classifier.input,
    classifier.get_layer(model_lib.LOGITS)(
      backbone.network(
        classifier.get_layer('preprocess')(classifier.input), training=False
      )
    ),
  )
  np.testing.assert_allclose(unaugmented(images), served, rtol=1e-6)

  # The exported signature (as trainer.make_serving_signatures calls the
  # model) is deterministic and augmentation-free.
  serve = tf.function(
    lambda x: {'logits': classifier(x, training=False)},
    input_signature=[
      tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)
    ],
  )
  tf.saved_model.save(
    classifier, str(tmp_path), signatures={'serving_default': serve}
  )
  loaded = tf.saved_model.load(str(tmp_path)).signatures['serving_default']
  first, second = loaded(images)['logits'], loaded(images)['logits']
  np.testing.assert_array_equal(first, second)
  np.testing.assert_allclose(first, served, rtol=1e-5, atol=1e-6)

  # Phase 1 cannot use cached embeddings of unaugmented views.
  assert trainer.phase1_cache_use(
    settings_lib.TrainerConfig(augmentation=settings)
  ).startswith('off: augmentation is on')
  assert trainer.phase1_cache_use(settings_lib.TrainerConfig()) == 'used'


def test_mixed_precision_trains_with_float32_outputs(tmp_path):
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  config = settings_lib.TrainerConfig(
    phase1_epochs=2,
    phase1_learning_rate=1e-2,
    phase2_epochs=1,
    phase2_learning_rate=1e-3,
    fine_tune_layers=4,
    batch_size=8,
    precision='mixed_float16',
    lr_schedule='cosine',
    lr_warmup_epochs=0.5,
  )
  assert keras.mixed_precision.global_policy().name == 'float32'
  with model_lib.precision_policy(config.precision):
    keras.utils.set_random_seed(0)
    with strategy.scope():
      backbone = _tiny_backbone()
      classifier = model_lib.build_classifier(backbone, IMAGE_SIZE, 2, 0.0)
    # Phase 1 on cached (float16 -> float32) embeddings, then phase 2.
    context = phases.PhaseContext(
      classifier,
      [backbone],
      strategy,
      _images(),
      _images(seed=1),
      phases.FitOptions.from_config(config),
    )
    results = trainer.train_phases(context, config)
    conv = backbone.network.get_layer('block3_conv')
    assert conv.compute_dtype == 'float16' and conv.kernel.dtype == 'float32'
    assert all(w.dtype == tf.float32 for w in classifier.weights)
    assert isinstance(
      classifier.optimizer, keras.mixed_precision.LossScaleOptimizer
    )
    assert classifier.output.dtype == tf.float32
    serve = tf.function(
      lambda x: {'probabilities': tf.nn.softmax(classifier(x, training=False))},
      input_signature=[
        tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32)
      ],
    )
    tf.saved_model.save(
      classifier, str(tmp_path), signatures={'serving_default': serve}
    )
  assert keras.mixed_precision.global_policy().name == 'float32'
  assert results['phase1']['embedding_cache'] == 'used'
  for phase in ('phase1', 'phase2'):
    losses = results[phase]['history']['loss']
    assert losses and np.all(np.isfinite(losses)), phase
  assert results['phase2']['unfrozen_layers'] == ['block3_conv']
  # Cosine: each epoch's last step has a lower rate than the one before.
  rates = results['phase1']['history']['learning_rate']
  assert len(rates) == 2 and 1e-2 > rates[0] > rates[1] >= 0
  loaded = tf.saved_model.load(str(tmp_path)).signatures['serving_default']
  assert loaded.structured_outputs['probabilities'].dtype == tf.float32
  probabilities = loaded(next(iter(_images(8)))[0])['probabilities']
  np.testing.assert_allclose(tf.reduce_sum(probabilities, -1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
  'settings, message',
  [
    ({'lr_schedule': 'linear'}, r'trainer.lr_schedule must be one of'),
    (
      {'fine_tune_layers': 3, 'fine_tune_from': 'conv_pw_12'},
      r"\['fine_tune_layers', 'fine_tune_from'\] are alternatives",
    ),
    (
      {'fine_tune_fraction': 1.5},
      r'trainer.fine_tune_fraction must be a number in \(0, 1\]',
    ),
    (
      {
        'phases': [
          {
            'epochs': 1,
            'learning_rate': 1e-4,
            'fine_tune_layers': 2,
            'fine_tune_fraction': 0.3,
          }
        ]
      },
      r'trainer.phases\[0\]: give exactly one of',
    ),
    (
      {'phases': [{'epochs': 1, 'learning_rate': 1e-4}, {'epochs': 1}]},
      r'trainer.phases\[1\].learning_rate must be a number > 0',
    ),
    (
      {'phases': [{'epochs': 1, 'learning_rate': 1e-4, 'lr': 3}]},
      r"trainer.phases\[0\]: unknown key\(s\) \['lr'\]",
    ),
    (
      {'phases': [], 'phase2_epochs': 3},
      r"phases replaces \['phase2_epochs'\]",
    ),
    ({'class_weights': 'auto'}, r"trainer.class_weights must be 'none'"),
    (
      {'augmentation': {'flip': 'diagonal'}},
      r'trainer.augmentation.flip must be one of',
    ),
    (
      {'augmentation': {'crop': 1.0}},
      r'trainer.augmentation.crop must be a number in \(0, 1\)',
    ),
    ({'precision': 'float16'}, r'trainer.precision must be one of'),
    (
      {'early_stopping_patience': -1},
      r'trainer.early_stopping_patience must be an integer >= 0',
    ),
  ],
)
def test_bad_settings_name_their_key(settings, message):
  with pytest.raises(ValueError, match=message):
    settings_lib.TrainerConfig.from_dict(settings)


def test_default_settings_are_one_phase_2():
  config = settings_lib.TrainerConfig()
  assert config.fine_tuning_phases() == [
    settings_lib.Phase(
      'phase2',
      2,
      1e-4,
      settings_lib.Unfreeze(top=20),
      settings_lib.Unfreeze(top=2),
    )
  ]
  assert (
    config.lr_schedule,
    config.early_stopping_patience,
    config.class_weights,
    config.augmentation,
    config.precision,
  ) == ('constant', 0, 'none', None, 'float32')

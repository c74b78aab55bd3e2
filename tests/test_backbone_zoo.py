"""Every zoo backbone builds, trains a step and serves raw image bytes.

Each Keras Applications backbone in `backbones.ZOO` is built with random
weights at its minimum input size through the Trainer's own code
(`trainer.build_model`, `phases.run_phase`, `trainer.make_dataset` on GZIP'd
tf.Examples, a real tf.Transform graph from `preprocessing.preprocessing_fn`),
checks its parameter count against the listing, trains one fine-tuning
step (which must move the head and the top `fine_tune_layers` and nothing
else) and classifies real PNG and JPEG bytes from data/fashion_demo through the
`serving_default` function of `trainer.make_serving_signatures`.

Cost, measured on the shared 2-core machine: building the 17 backbones
alone takes about 100 s; in graph mode, tracing a train step takes tens of
seconds per big backbone (InceptionV3's test took 113 s), and saving one
(tf_keras traces every layer's call for the SavedModel) took from 10 s
(VGG16) to 150 s (DenseNet121). So:
  * the train step and the serving call run eagerly
    (`tf.config.run_functions_eagerly`): the same Keras `train_step` and
    signature code, without compiling the graph;
  * only the backbones in `SAVE_AND_LOAD` are also saved with the real
    signatures (graph mode), loaded with `tf.saved_model.load` and must give
    the eager call's probabilities; set TFX_TRANSFER_ZOO_SAVE_ALL=1 to do
    that for every backbone. The default MobileNet is saved and served by
    the pipeline's end-to-end tests.

Also here: the minimum image_size check, TF Hub short names, the listing
(`tfx-transfer backbones`), and a local SavedModel feature extractor
(`file:<dir>` and `hub:<dir>`) trained, saved and served end to end offline.
"""

import functools
import gc
import glob
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata
from tensorflow_transform.tf_metadata import metadata_io
from tensorflow_transform.tf_metadata import schema_utils
import tf_keras as keras

from modules import backbones
from modules import features
from modules import model as model_lib
from modules import phases
from modules import preprocessing
from modules import trainer
from pipeline import settings as settings_lib

DEMO_DATA = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'data',
  'fashion_demo',
)
# The cheapest to save (20 layers; caffe-style preprocess_input, as ResNet).
SAVE_AND_LOAD = ('VGG16',)
_SAVE_ALL = os.environ.get('TFX_TRANSFER_ZOO_SAVE_ALL') == '1'
# With random weights and BatchNorm in inference mode (unit moving variance),
# MobileNet's pooled features vanish (measured: mean |feature| 2e-21), so an
# Adam step on any weight they multiply is below float32 resolution: only the
# logits bias moves (with the head's weight decay off). tests/test_model.py
# trains it with its offline weights.
_VANISHING_FEATURES = ('MobileNet',)
_RAW_SPEC = {
  features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
  features.LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
}


def _demo_files():
  """A PNG and a JPEG of every class, sorted: (path, label) pairs."""
  files = []
  for class_dir in sorted(glob.glob(os.path.join(DEMO_DATA, '*'))):
    for extension in ('png', 'jpg'):
      path = sorted(glob.glob(os.path.join(class_dir, f'*.{extension}')))[0]
      files.append((path, os.path.basename(class_dir)))
  return files


@pytest.fixture(scope='module')
def examples(tmp_path_factory):
  """The demo files as ExampleGen writes them: GZIP'd tf.Examples."""
  rows = []
  for path, label in _demo_files():
    with open(path, 'rb') as f:
      rows.append(
        {features.IMAGE_KEY: f.read(), features.LABEL_KEY: label.encode()}
      )
  pattern = str(tmp_path_factory.mktemp('examples') / 'data.gz')
  with tf.io.TFRecordWriter(pattern, 'GZIP') as writer:
    for row in rows:
      writer.write(
        tf.train.Example(
          features=tf.train.Features(
            feature={
              k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
              for k, v in row.items()
            }
          )
        ).SerializeToString()
      )
  return rows, pattern


def _make_transform_graph(rows, image_size, output_dir):
  """The Transform component's graph for `image_size`, made with tft_beam."""
  metadata = dataset_metadata.DatasetMetadata(
    schema_utils.schema_from_feature_spec(_RAW_SPEC)
  )
  preprocessing_fn = functools.partial(
    preprocessing.preprocessing_fn, custom_config={'image_size': image_size}
  )
  with beam.Pipeline() as pipeline:
    with tft_beam.Context(temp_dir=os.path.join(output_dir, 'tmp')):
      data = pipeline | beam.Create(rows)
      transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(
        preprocessing_fn
      )
      _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
  metadata_io.write_metadata(
    metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR)
  )
  return tft.TFTransformOutput(output_dir)


@pytest.fixture(scope='module')
def transform_graph(examples, tmp_path_factory):
  """image_size -> the transform graph; each size is made once."""
  rows, _ = examples
  root = tmp_path_factory.mktemp('transform')
  graphs = {}

  def _graph(image_size):
    if image_size not in graphs:
      graphs[image_size] = _make_transform_graph(
        rows, image_size, str(root / str(image_size))
      )
    return graphs[image_size]

  return _graph


def _snapshot(layers):
  return {w.name: w.numpy().copy() for layer in layers for w in layer.weights}


@pytest.fixture
def eager_functions():
  """Runs tf.functions eagerly for the test; graph mode again afterwards."""
  tf.config.run_functions_eagerly(True)
  yield
  tf.config.run_functions_eagerly(False)
  keras.backend.clear_session()
  gc.collect()


@pytest.mark.parametrize('name', list(backbones.ZOO))
def test_backbone_builds_trains_and_serves(
  name, examples, transform_graph, eager_functions, tmp_path
):
  del eager_functions  # Used for its effect.
  rows, pattern = examples
  entry = backbones.ZOO[name]
  tf_transform_output = transform_graph(entry.min_size)
  names = trainer.class_names(tf_transform_output)
  settings = {'backbone': name, 'weights': 'none', 'image_size': entry.min_size}
  if name in _VANISHING_FEATURES:
    # The head's L2 penalty would move the kernel without any feature.
    settings['head_weight_decay'] = 0.0
  config = settings_lib.TrainerConfig.from_dict(settings)
  keras.utils.set_random_seed(0)
  strategy = tf.distribute.get_strategy()
  with strategy.scope():
    classifier, (backbone,) = trainer.build_model(
      features.IMAGE, config, len(names)
    )
  assert backbone.network.count_params() == entry.parameters
  assert backbone.preprocess is entry.preprocess_input

  dataset = trainer.make_dataset(
    [pattern], tf_transform_output, batch_size=len(rows), shuffle=False
  )
  before = _snapshot(classifier.layers)
  result = phases.run_phase(
    phases.PhaseContext(
      classifier, [backbone], strategy, dataset, dataset, phases.FitOptions()
    ),
    'phase2',
    epochs=1,
    learning_rate=1e-3,
    fine_tune_layers=config.fine_tune_layers,
  )
  after = _snapshot(classifier.layers)
  assert np.isfinite(result['history']['loss'][0])
  changed = {w for w in before if not np.array_equal(before[w], after[w])}
  logits = classifier.get_layer(model_lib.LOGITS)
  unfrozen = {
    w.name
    for layer in backbone.layers
    if layer.name in result['unfrozen_layers']
    for w in layer.trainable_weights
  }
  assert unfrozen, 'fine-tuning unfroze no backbone weights'
  assert changed <= unfrozen | {w.name for w in logits.weights}
  if name in _VANISHING_FEATURES:
    assert changed == {logits.bias.name}
  else:
    assert {w.name for w in logits.weights} <= changed
    assert unfrozen & changed, 'no backbone weight trained'

  signatures = trainer.make_serving_signatures(
    classifier, tf_transform_output, names
  )
  image_bytes = tf.constant([row[features.IMAGE_KEY] for row in rows])
  served = signatures['serving_default'](image_bytes=image_bytes)
  probabilities = served['probabilities'].numpy()
  assert probabilities.shape == (len(rows), len(names))
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  assert set(served['label'].numpy().astype(str)) <= set(names)

  if name in SAVE_AND_LOAD or _SAVE_ALL:
    tf.config.run_functions_eagerly(False)
    export_dir = str(tmp_path / 'serving_model')
    tf.saved_model.save(classifier, export_dir, signatures=signatures)
    loaded = tf.saved_model.load(export_dir).signatures['serving_default']
    reloaded = loaded(image_bytes=image_bytes)
    np.testing.assert_allclose(
      reloaded['probabilities'].numpy(), probabilities, atol=1e-5
    )
    assert (
      reloaded['label'].numpy().tolist() == served['label'].numpy().tolist()
    )


def test_image_size_below_a_backbones_minimum_is_a_clear_error():
  with pytest.raises(
    ValueError,
    match=r'image_size 74 is below the minimum '
    r'input size of InceptionV3 \(75; native 299\)',
  ):
    backbones.build_backbone('InceptionV3', 74, 'none')
  backbones.check_image_size('InceptionV3', 75)
  backbones.check_image_size('hub:inception_v3', 32)  # Sizes unknown: no check.
  for name, entry in backbones.ZOO.items():
    assert entry.min_size <= preprocessing.DEFAULT_IMAGE_SIZE, name
    assert entry.min_size <= entry.native_size, name


def test_hub_short_names_resolve_to_their_handles(tmp_path):
  assert backbones.hub_handle('mobilenet_v2_100_224') == (
    'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5'
  )
  assert backbones.HUB_CATALOGUE['inception_v3'].native_size == 299
  for entry in backbones.HUB_CATALOGUE.values():
    assert entry.url.startswith('https://tfhub.dev/') and (
      'feature' in entry.url
    ), entry.url
  url = 'https://tfhub.dev/google/imagenet/resnet_v2_101/feature_vector/5'
  assert backbones.hub_handle(url) == url
  assert backbones.hub_handle(str(tmp_path)) == str(tmp_path)
  with pytest.raises(
    ValueError,
    match=r"Unknown TF Hub name 'mobilenet_v3'.*"
    r"'efficientnet_b0', 'inception_v3'",
  ):
    backbones.build_backbone('hub:mobilenet_v3', 32)


def test_listing_covers_the_zoo_hub_names_and_text_encoders():
  listing = backbones.listing()
  assert [row['name'] for row in listing['image']] == list(backbones.ZOO)
  mobilenet = listing['image'][
    [r['name'] for r in listing['image']].index('MobileNet')
  ]
  assert mobilenet == {
    'name': 'MobileNet',
    'parameters': 3_228_864,
    'native_size': 224,
    'min_size': 32,
    'offline_weights': True,
  }
  assert sum(row['offline_weights'] for row in listing['image']) == 1
  assert {f'hub:{name}' for name in backbones.HUB_CATALOGUE} <= {
    row['name'] for row in listing['hub']
  }
  minilm = listing['text'][0]
  assert minilm['name'] == 'MiniLM'
  encoder = backbones.build_text_backbone('MiniLM', 16, 'none')
  assert encoder.network.count_params() == minilm['parameters']
  assert encoder.network.output_shape[-1] == minilm['dimension']


@pytest.mark.parametrize('prefix', ['file:', 'hub:'])
def test_local_saved_model_feature_extractor_end_to_end(
  prefix, examples, transform_graph, tmp_path
):
  """A Hub-style SavedModel ([0, 1] images -> vectors) from a local folder."""
  rows, pattern = examples
  image_size = 32
  keras.utils.set_random_seed(0)
  extractor = keras.Sequential(
    [
      keras.Input((image_size, image_size, 3)),
      keras.layers.Conv2D(8, 3, activation='relu'),
      keras.layers.GlobalAveragePooling2D(),
    ]
  )
  module_dir = str(tmp_path / 'feature_vector')
  tf.saved_model.save(extractor, module_dir)
  tf_transform_output = transform_graph(image_size)
  names = trainer.class_names(tf_transform_output)
  config = settings_lib.TrainerConfig.from_dict(
    {'backbone': prefix + module_dir, 'image_size': image_size}
  )
  classifier, (backbone,) = trainer.build_model(
    features.IMAGE, config, len(names)
  )
  dataset = trainer.make_dataset(
    [pattern], tf_transform_output, batch_size=len(rows), shuffle=False
  )
  logits = classifier.get_layer(model_lib.LOGITS)
  before = [w.numpy().copy() for w in logits.weights]
  phases.run_phase(
    phases.PhaseContext(
      classifier,
      [backbone],
      tf.distribute.get_strategy(),
      dataset,
      dataset,
      phases.FitOptions(),
    ),
    'phase1',
    epochs=1,
    learning_rate=1e-2,
    fine_tune_layers=0,
  )
  assert all(
    not np.array_equal(b, w.numpy()) for b, w in zip(before, logits.weights)
  )

  image_bytes = tf.constant([row[features.IMAGE_KEY] for row in rows])
  expected = classifier(
    tf_transform_output.transform_features_layer()(
      {features.IMAGE_KEY: image_bytes}
    )[features.IMAGE_XF]
  ).numpy()
  export_dir = str(tmp_path / 'serving_model')
  tf.saved_model.save(
    classifier,
    export_dir,
    signatures=trainer.make_serving_signatures(
      classifier, tf_transform_output, names
    ),
  )
  served = tf.saved_model.load(export_dir).signatures['serving_default'](
    image_bytes=image_bytes
  )
  np.testing.assert_allclose(
    served['probabilities'].numpy(), tf.nn.softmax(expected).numpy(), atol=1e-5
  )

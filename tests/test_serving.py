"""Serving, bad input: one bad element never fails the batch.

The pushed model of the shared demo run (tests/conftest.py `demo_run`) gets
the bad-file corpus (tests/helpers.py `bad_image_corpus`: a zero-byte .jpg,
an HTML page and a text file saved as .jpg, a WebP, a TIFF, PNG headers
claiming 30000x30000 and 20000x20000 (the latter a real 400 KB PNG that
decodes to 1.2 GB), a JPEG, a GIF and a BMP claiming more than `max_pixels`,
a truncated JPEG, a PNG with a corrupt body, cut headers) mixed into a batch
of good images (PNG, JPEG, GIF, BMP):
* through `tf.saved_model.load` in this process and in a fresh interpreter
  where neither the project nor Keras can be imported: each bad element gets
  its `status`, an empty label and zero probabilities, each good one the
  same probabilities as when it is classified alone; the 20000x20000 PNG is
  rejected from its header (peak RSS printed; the warm-up's peak there is
  high, so the bound that bites is the one on `predict` below);
* through `tfx-transfer predict`: one JSON line per input in order, `error`
  on the bad ones (unreadable paths too: missing, a directory, no
  permission), exit code 2; all good: exit 0. Its peak RSS is measured.
The text and image+text checks are in tests/test_text_pipeline_e2e.py.
"""

import json
import os
import pathlib
import subprocess
import sys
from typing import Dict, List

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

import helpers
from modules import features
from modules import serving
from pipeline import cli

pytestmark = pytest.mark.reliability('bad input')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFX_TRANSFER = os.path.join(os.path.dirname(sys.executable), 'tfx-transfer')
DEMO = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
MB = 1024  # ru_maxrss is in KiB on Linux.


def _good_images() -> Dict[str, bytes]:
  """Two demo images and one of each other decodable format."""
  with open(os.path.join(DEMO, 'bag', 'bag_00018.png'), 'rb') as f:
    bag = f.read()
  with open(os.path.join(DEMO, 'bag', 'bag_00030.jpg'), 'rb') as f:
    bag_jpeg = f.read()
  return {
    'bag.png': bag,
    'bag.jpg': bag_jpeg,
    'red.gif': helpers.image_bytes('GIF', size=(20, 12)),
    'green.bmp': helpers.image_bytes('BMP', size=(9, 9), color=(0, 200, 0)),
    'png_named.jpg': helpers.image_bytes('PNG', size=(30, 30)),
  }


def _mixed(good: Dict[str, bytes], bad: Dict[str, tuple]) -> List[str]:
  """Names of good and bad files interleaved, bad ones first and last."""
  bad_names, good_names = list(bad), list(good)
  names = []
  while bad_names or good_names:
    names += bad_names[:3] + good_names[:1]
    bad_names, good_names = bad_names[3:], good_names[1:]
  return names


def test_each_bad_image_gets_its_status_and_the_rest_are_classified(demo_run):
  config, result = demo_run
  model = tf.saved_model.load(result.pushed_to)
  serve = model.signatures['serving_default']
  # What TF Serving's REST row format relies on (docs/serving.md).
  assert {
    k: (v.shape.as_list(), v.dtype)
    for k, v in serve.structured_input_signature[1].items()
  } == {'image_bytes': ([None], tf.string)}
  assert sorted(serve.structured_outputs) == [
    'classes',
    'label',
    'probabilities',
    'probability',
    'status',
  ]
  assert all(t.shape[0] is None for t in serve.structured_outputs.values())
  good, bad = _good_images(), helpers.bad_image_corpus()
  alone = serve(image_bytes=tf.constant(list(good.values())))
  assert alone['status'].numpy().tolist() == [b'ok'] * len(good)
  expected = dict(zip(good, alone['probabilities'].numpy()))

  names = _mixed(good, bad)
  data = {**good, **{name: value for name, (value, _) in bad.items()}}
  mixed = serve(image_bytes=tf.constant([data[n] for n in names]))

  statuses = dict(zip(names, mixed['status'].numpy().astype(str)))
  assert statuses == {
    **{n: 'ok' for n in good},
    **{n: status for n, (_, status) in bad.items()},
  }
  for i, name in enumerate(names):
    probabilities = mixed['probabilities'].numpy()[i]
    if name in good:
      np.testing.assert_allclose(
        probabilities, expected[name], atol=1e-5, err_msg=name
      )
      assert (
        mixed['label'].numpy()[i]
        == alone['label'].numpy()[list(good).index(name)]
      )
    else:
      assert not probabilities.any() and mixed['probability'][i] == 0
      assert mixed['label'].numpy()[i] == b''
  classes = mixed['classes'].numpy()
  assert classes.shape == (len(names), len(expected['bag.png']))

  all_bad = serve(image_bytes=tf.constant([v for v, _ in bad.values()]))
  assert all_bad['status'].numpy().astype(str).tolist() == [
    s for _, s in bad.values()
  ]
  assert all_bad['probabilities'].shape == (len(bad), classes.shape[1])
  assert not all_bad['probabilities'].numpy().any()
  none = serve(image_bytes=tf.constant([], tf.string))
  assert none['status'].shape == (0,) and none['probabilities'].shape == (
    0,
    classes.shape[1],
  )

  # The Evaluator's signature judges serialized examples the same way.
  examples = [
    tf.train.Example(
      features=tf.train.Features(
        feature={
          features.IMAGE_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[data[n]])
          )
        }
      )
    ).SerializeToString()
    for n in names
  ]
  by_examples = model.signatures['serving_examples'](
    examples=tf.constant(examples)
  )
  assert (
    by_examples['status'].numpy().tolist() == mixed['status'].numpy().tolist()
  )
  np.testing.assert_allclose(
    by_examples['probabilities'].numpy(),
    mixed['probabilities'].numpy(),
    atol=1e-5,
  )

  # The judged decode is the transform graph's, byte for byte.
  transform = tft.TFTransformOutput(
    helpers.latest_artifact(
      config.pipeline_root, 'Transform', 'transform_graph'
    )
  )
  transformed = transform.transform_features_layer()(
    {features.IMAGE_KEY: tf.constant([[v] for v in good.values()])}
  )
  size = transformed[features.IMAGE_XF].shape[1]
  statuses, images = serving.judge_and_decode(
    tf.constant(list(good.values())), size, max_pixels=40_000_000
  )
  assert statuses.numpy().tolist() == [b'ok'] * len(good)
  np.testing.assert_array_equal(
    images.numpy(), transformed[features.IMAGE_XF].numpy()
  )


_PLAIN = """
import json, resource, sys
for blocked in ('keras', 'tf_keras', 'modules'):  # Importing them fails.
  sys.modules[blocked] = None
import tensorflow as tf
files = json.load(open(sys.argv[1]))
read = lambda name: open(files[name], 'rb').read()
serve = tf.saved_model.load(sys.argv[2]).signatures['serving_default']
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
good = [n for n in files if n.startswith('good/')]
names = json.load(open(sys.argv[3]))
alone = serve(image_bytes=tf.constant([read(n) for n in good]))
warm = serve(image_bytes=tf.constant([read(good[0])] * len(names)))
before = rss()
mixed = serve(image_bytes=tf.constant([read(n) for n in names]))
after = rss()
decoded = tf.io.decode_image(read('bad/bomb_20000.png'), channels=3,
                             expand_animations=False)
print(json.dumps({
    'alone': dict(zip(good, alone['probabilities'].numpy().tolist())),
    'status': mixed['status'].numpy().astype(str).tolist(),
    'probabilities': mixed['probabilities'].numpy().tolist(),
    'rss_before': before, 'rss_after': after, 'rss_decoded': rss(),
    'decoded_shape': decoded.shape.as_list()}))
"""


def _write_corpus(folder: pathlib.Path) -> Dict[str, str]:
  """Writes good/ and bad/ files; returns {'good/x': path, 'bad/y': path}."""
  files = {}
  corpus = {
    **{f'good/{n}': v for n, v in _good_images().items()},
    **{f'bad/{n}': v for n, (v, _) in helpers.bad_image_corpus().items()},
  }
  for name, data in corpus.items():
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files[name] = str(path)
  return files


@pytest.mark.reliability('security')
def test_plain_saved_model_load_judges_each_element_in_bounded_memory(
  demo_run, tmp_path
):
  """A fresh interpreter where Keras and the project cannot be imported."""
  _, result = demo_run
  files = _write_corpus(tmp_path / 'corpus')
  (tmp_path / 'files.json').write_text(json.dumps(files))
  bad = helpers.bad_image_corpus()
  names = _mixed(
    {n: 0 for n in files if n.startswith('good/')},
    {f'bad/{n}': v for n, v in bad.items()},
  )
  (tmp_path / 'names.json').write_text(json.dumps(names))
  process = subprocess.run(
    [
      sys.executable,
      '-c',
      _PLAIN,
      str(tmp_path / 'files.json'),
      result.pushed_to,
      str(tmp_path / 'names.json'),
    ],
    cwd='/',
    env={**os.environ, 'PYTHONPATH': '', 'TF_CPP_MIN_LOG_LEVEL': '2'},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  out = json.loads(process.stdout.splitlines()[-1])

  expected = {n: 'ok' for n in files if n.startswith('good/')}
  expected.update({f'bad/{n}': status for n, (_, status) in bad.items()})
  assert dict(zip(names, out['status'])) == expected
  for name, probabilities in zip(names, out['probabilities']):
    if name in out['alone']:
      np.testing.assert_allclose(probabilities, out['alone'][name], atol=1e-5)
    else:
      assert not any(probabilities)
  grown = (out['rss_after'] - out['rss_before']) / MB
  decoding = (out['rss_decoded'] - out['rss_after']) / MB
  print(
    f'peak RSS {out["rss_before"] / MB:.0f} MB before the mixed batch, '
    f'+{grown:.0f} MB while judging it; decoding the 20000x20000 PNG '
    f'directly: +{decoding:.0f} MB'
  )
  assert out['decoded_shape'] == [20000, 20000, 3]  # The bomb is real.
  assert grown < 200


def _predict(*args, **kwargs) -> subprocess.CompletedProcess:
  """`tfx-transfer predict`, run under a parent that reports its peak RSS."""
  measure = (
    'import resource, subprocess, sys\n'
    'code = subprocess.run(sys.argv[1:]).returncode\n'
    'peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n'
    'print(f"peak_rss_kb={peak}", file=sys.stderr)\n'
    'sys.exit(code)\n'
  )
  return subprocess.run(
    [sys.executable, '-c', measure, TFX_TRANSFER, 'predict', *args],
    cwd=PROJECT_ROOT,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
    **kwargs,
  )


def _peak_mb(process: subprocess.CompletedProcess) -> float:
  line = [l for l in process.stderr.splitlines() if 'peak_rss_kb=' in l][-1]
  return int(line.split('=')[1]) / MB


def test_predict_prints_a_line_per_input_and_exits_2_on_bad_ones(
  demo_run, tmp_path
):
  config, _ = demo_run
  files = _write_corpus(tmp_path / 'corpus')
  (tmp_path / 'folder.jpg').mkdir()
  secret = tmp_path / 'secret.jpg'
  secret.write_bytes(_good_images()['bag.jpg'])
  secret.chmod(0o000)
  bad = helpers.bad_image_corpus()
  unreadable = {
    str(tmp_path / 'missing.jpg'): 'No such file or directory',
    str(tmp_path / 'folder.jpg'): 'Is a directory',
    str(secret): 'Permission denied',
  }
  good = [files[n] for n in files if n.startswith('good/')]
  paths = (
    good[:2] + [files[f'bad/{n}'] for n in bad] + list(unreadable) + good[2:]
  )

  process = _predict(
    '--model',
    config.serving_dir,
    *paths,
    preexec_fn=(helpers.drop_root_file_access if os.geteuid() == 0 else None),
  )

  assert process.returncode == cli.EXIT_BAD_INPUT, process.stderr[-3000:]
  lines = [json.loads(line) for line in process.stdout.splitlines()]
  assert [line['image'] for line in lines] == paths
  by_path = {line['image']: line for line in lines}
  for path in good:
    line = by_path[path]
    assert line['status'] == 'ok' and 'error' not in line
    assert sum(line['probabilities'].values()) == pytest.approx(1, abs=1e-3)
    assert line['label'] == max(
      line['probabilities'], key=line['probabilities'].get
    )
  for name, (_, status) in bad.items():
    line = by_path[files[f'bad/{name}']]
    assert line['status'] == status and line['error'].startswith(status), line
    assert 'label' not in line
  for path, reason in unreadable.items():
    line = by_path[path]
    assert line['status'] == 'unreadable' and reason in line['error'], line
  assert f'{len(bad) + len(unreadable)} of {len(paths)} inputs' in (
    process.stderr
  )

  all_good = _predict('--model', config.serving_dir, *good)
  assert all_good.returncode == 0, all_good.stderr[-3000:]
  assert [json.loads(l)['status'] for l in all_good.stdout.splitlines()] == [
    'ok'
  ] * len(good)
  print(
    f'predict peak RSS: {_peak_mb(process):.0f} MB with the bad files '
    f'(the 20000x20000 PNG among them), {_peak_mb(all_good):.0f} MB with '
    'the good ones only'
  )
  assert _peak_mb(process) < _peak_mb(all_good) + 200

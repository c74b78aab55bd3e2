"""Tests for components.image_example_gen.

They run the real executor (Beam DirectRunner) on tiny image trees written by
the tests, with exec_properties taken from the factory-built component: the
layouts (folder per class, split folders, a CSV manifest), the splits, and
every bad-input case with its reason in the ingestion report.
"""

import hashlib
import io
import json
import os
import pathlib
import random
from typing import Dict, List

from PIL import Image
import pytest
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components import image_example_gen as ieg


def _image_bytes(fmt: str = 'JPEG', size=(8, 8), color=(200, 30, 30)) -> bytes:
  buf = io.BytesIO()
  Image.new('RGB', size, color).save(buf, fmt)
  return buf.getvalue()


def _truncated_jpeg() -> bytes:
  buf = io.BytesIO()
  noise = Image.frombytes('RGB', (24, 24), random.Random(0).randbytes(1728))
  noise.save(buf, 'JPEG', quality=95)
  return buf.getvalue()[: len(buf.getvalue()) * 2 // 3]  # Keeps the header.


def _write(path: pathlib.Path, data: bytes) -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return data


def _tree(root: pathlib.Path, classes: Dict[str, int]) -> Dict[str, bytes]:
  """Writes n distinct JPEGs per class; returns {relative path: bytes}."""
  files = {}
  for index, (name, count) in enumerate(classes.items()):
    for i in range(count):
      rel = f'{name}/{i}.jpg'
      files[rel] = _write(
        root / rel, _image_bytes(color=(i * 9 % 256, index * 60, 7))
      )
  return files


def _run(root: pathlib.Path, out: pathlib.Path, **kwargs):
  """Runs the executor as the factory configures it; returns the report."""
  gen = ieg.image_example_gen(str(root), **kwargs)
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  ieg.ImageExampleGenExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  return _report(out), examples


def _report(out: pathlib.Path) -> dict:
  return json.loads((out / ieg.REPORT_FILE_NAME).read_text())


def _read_split(out: pathlib.Path, split: str) -> List[Dict[str, bytes]]:
  files = tf.io.gfile.glob(os.path.join(out, f'Split-{split}', '*.gz'))
  rows = []
  for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
    example = tf.train.Example.FromString(record.numpy())
    # The same bytes on every run: the Trainer's fit/validation carve hashes
    # them (modules/trainer.py, in_part).
    assert record.numpy() == example.SerializeToString(deterministic=True)
    features = example.features.feature
    assert set(features) == {
      'image',
      'label',
      'path',
      'image_width',
      'image_height',
      'image_format',
      'image_byte_size',
    }
    data = features['image'].bytes_list.value[0]
    with Image.open(io.BytesIO(data)) as image:  # The header's properties.
      assert (
        features['image_width'].int64_list.value[0],
        features['image_height'].int64_list.value[0],
        features['image_format'].bytes_list.value[0].decode(),
        features['image_byte_size'].int64_list.value[0],
      ) == (*image.size, image.format, len(data))
    rows.append(
      {
        k: f.bytes_list.value[0]
        for k, f in features.items()
        if f.WhichOneof('kind') == 'bytes_list'
      }
    )
  return rows


def _expected_split(path: str) -> str:
  """The split TFX's partition function picks for partition_feature 'path'."""
  key = tf.train.Feature(
    bytes_list=tf.train.BytesList(value=[path.encode()])
  ).SerializeToString(deterministic=True)
  return 'train' if int(hashlib.sha256(key).hexdigest(), 16) % 5 < 4 else 'eval'


def _reasons(report: dict) -> Dict[str, str]:
  return {r['path']: r['reason'] for r in report['rejected_files']}


def test_folder_per_class_hash_splits(tmp_path):
  files = _tree(tmp_path / 'data', {'cat': 20, 'dog': 20})
  report, examples = _run(tmp_path / 'data', tmp_path / 'out')

  assert artifact_utils.decode_split_names(examples.split_names) == [
    'train',
    'eval',
  ]
  assert report['counts'] == {'read': 40, 'ingested': 40, 'rejected': 0}
  assert report['ingested_per_class'] == {'cat': 20, 'dog': 20}
  seen = {}
  for split in ('train', 'eval'):
    rows = _read_split(tmp_path / 'out', split)
    assert report['ingested_per_split'][split] == len(rows)
    for row in rows:
      path = row['path'].decode()
      seen[path] = split
      assert row['image'] == files[path]
      assert row['label'].decode() == path.split('/')[0]
  # Every file once; the split depends only on the path (deterministic).
  assert seen == {path: _expected_split(path) for path in files}
  assert 3 <= report['ingested_per_split']['eval'] <= 14


def test_predefined_split_folders(tmp_path):
  data = tmp_path / 'data'
  files = {
    **_tree(data / 'train', {'cat': 3, 'dog': 3}),
    **_tree(data / 'eval', {'cat': 2, 'dog': 2}),
  }
  report, examples = _run(
    data, tmp_path / 'out', split_folders=('train', 'eval')
  )

  assert artifact_utils.decode_split_names(examples.split_names) == [
    'train',
    'eval',
  ]
  assert report['counts'] == {'read': 10, 'ingested': 10, 'rejected': 0}
  assert report['ingested_per_split_and_class'] == {
    'train': {'cat': 3, 'dog': 3},
    'eval': {'cat': 2, 'dog': 2},
  }
  for split in ('train', 'eval'):
    for row in _read_split(tmp_path / 'out', split):
      path = row['path'].decode()
      assert path.startswith(split + '/')
      assert row['image'] == files[path.split('/', 1)[1]]
      assert row['label'].decode() == path.split('/')[1]


def test_manifest(tmp_path):
  data = tmp_path / 'data'
  files = {
    f'imgs/{i}.jpg': _write(
      data / f'imgs/{i}.jpg', _image_bytes(color=(i * 40, 0, 0))
    )
    for i in range(6)
  }
  _write(tmp_path / 'outside.jpg', _image_bytes())
  rows = [f'imgs/{i}.jpg,{"cat" if i < 3 else "dog"}' for i in range(6)]
  rows += [
    '../outside.jpg,cat',
    f'{tmp_path}/outside.jpg,dog',
    'imgs/missing.jpg,dog',
    './imgs/0.jpg,dog',
  ]
  (data / 'labels.csv').write_text('path,label\n' + '\n'.join(rows) + '\n')

  report, _ = _run(
    data, tmp_path / 'out', manifest='labels.csv', max_rejected_fraction=0.5
  )

  assert report['counts'] == {'read': 10, 'ingested': 6, 'rejected': 4}
  assert report['ingested_per_class'] == {'cat': 3, 'dog': 3}
  assert _reasons(report) == {
    '../outside.jpg': "path escapes the data root via '..'",
    f'{tmp_path}/outside.jpg': (
      'absolute path in manifest: paths must be relative to the data root'
    ),
    'imgs/missing.jpg': 'file not found',
    'imgs/0.jpg': 'duplicate of manifest line 2',
  }
  rows = _read_split(tmp_path / 'out', 'train') + _read_split(
    tmp_path / 'out', 'eval'
  )
  assert {r['path'].decode(): r['image'] for r in rows} == files


def test_manifest_errors(tmp_path):
  _tree(tmp_path, {'cat': 1, 'dog': 1})
  with pytest.raises(ValueError, match=r"'labels.csv' not found under data"):
    _run(tmp_path, tmp_path / 'out', manifest='labels.csv')
  (tmp_path / 'labels.csv').write_text('file,class\ncat/0.jpg,cat\n')
  with pytest.raises(ValueError, match='"path" and "label" columns'):
    _run(tmp_path, tmp_path / 'out', manifest='labels.csv')


def _bad_tree(data: pathlib.Path) -> Dict[str, bytes]:
  """12 good JPEGs, a PNG named .jpg (good) and 7 bad files: 35% rejected."""
  files = _tree(data, {'cat': 6, 'dog': 6})
  files['cat/png_named.jpg'] = _write(
    data / 'cat/png_named.jpg', _image_bytes('PNG')
  )
  _write(data / 'cat/zero.jpg', b'')
  _write(data / 'cat/truncated.jpg', _truncated_jpeg())
  _write(data / 'dog/text.jpg', b'not an image at all')
  _write(data / 'dog/scan.tiff', _image_bytes('TIFF'))
  _write(data / 'dog/photo.webp', _image_bytes('WEBP'))
  _write(data / 'dog/huge.png', _image_bytes('PNG', size=(40, 40)))
  _write(data / 'notes.txt', b'stray file at the root')
  return files


def test_bad_files_are_rejected_with_reasons(tmp_path):
  files = _bad_tree(tmp_path / 'data')
  report, _ = _run(
    tmp_path / 'data',
    tmp_path / 'out',
    max_rejected_fraction=0.4,
    max_pixels=1000,
  )

  assert report['counts'] == {'read': 20, 'ingested': 13, 'rejected': 7}
  assert report['rejected_fraction'] == pytest.approx(0.35)
  assert report['ingested_per_class'] == {'cat': 7, 'dog': 6}
  assert sum(report['ingested_per_split'].values()) == 13
  assert report['options'] == {'max_rejected_fraction': 0.4, 'max_pixels': 1000}
  reasons = _reasons(report)
  assert reasons == {
    'cat/zero.jpg': 'zero-byte file',
    'cat/truncated.jpg': reasons['cat/truncated.jpg'],
    'dog/text.jpg': 'not an image (unrecognised file format)',
    'dog/scan.tiff': 'unsupported format TIFF: tf.io.decode_image only '
    'decodes JPEG, PNG, GIF and BMP',
    'dog/photo.webp': 'unsupported format WEBP: tf.io.decode_image only '
    'decodes JPEG, PNG, GIF and BMP',
    'dog/huge.png': 'image too large (possible decompression bomb): 40x40 '
    '= 1600 pixels > max_pixels 1000',
    'notes.txt': 'not inside a class folder (expected '
    '<folder>/<class>/<image>)',
  }
  assert reasons['cat/truncated.jpg'].startswith(
    'corrupt or truncated image: image file is truncated'
  )
  rows = _read_split(tmp_path / 'out', 'train') + _read_split(
    tmp_path / 'out', 'eval'
  )
  assert {r['path'].decode(): r['image'] for r in rows} == files


def test_rejected_fraction_over_threshold(tmp_path):
  _bad_tree(tmp_path / 'data')
  with pytest.raises(ValueError) as error:
    _run(tmp_path / 'data', tmp_path / 'out', max_pixels=1000)
  message = str(error.value)
  assert '7 of 20 files (35.0%)' in message
  assert 'max_rejected_fraction=0.1' in message
  assert 'cat/zero.jpg (zero-byte file)' in message
  assert str(tmp_path / 'data') in message
  # The report is written before failing, for diagnosis.
  assert _report(tmp_path / 'out')['counts']['rejected'] == 7


def test_empty_class_folder(tmp_path):
  _tree(tmp_path, {'cat': 3, 'dog': 3})
  (tmp_path / 'bird').mkdir()
  with pytest.raises(
    ValueError,
    match=r'No valid image for class folder '
    r"'bird' under data root",
  ):
    _run(tmp_path, tmp_path / 'out')


def test_all_files_bad(tmp_path):
  _write(tmp_path / 'cat/zero.jpg', b'')
  _write(tmp_path / 'dog/text.jpg', b'text')
  with pytest.raises(
    ValueError,
    match='All 2 files under data root .* were '
    r'rejected: cat/zero.jpg \(zero-byte file\)',
  ):
    _run(tmp_path, tmp_path / 'out')


def test_single_class(tmp_path):
  _tree(tmp_path, {'cat': 3})
  with pytest.raises(ValueError, match=r"Only one class \('cat'\)"):
    _run(tmp_path, tmp_path / 'out')


def test_no_files(tmp_path):
  (tmp_path / 'data/cat').mkdir(parents=True)
  (tmp_path / 'data/dog').mkdir()
  with pytest.raises(ValueError, match='No files found under data root'):
    _run(tmp_path / 'data', tmp_path / 'out')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='No class folders in'):
    _run(tmp_path / 'empty', tmp_path / 'out')


def test_custom_config():
  config = ieg.make_custom_config(max_rejected_fraction=0.25, max_pixels=99)
  gen = ieg.image_example_gen(
    '/data', max_rejected_fraction=0.25, max_pixels=99
  )
  assert ieg.parse_custom_config(gen.exec_properties['custom_config']) == (
    ieg.Options(max_rejected_fraction=0.25, max_pixels=99)
  )
  assert ieg.parse_custom_config(config) == ieg.Options(0.25, 99)
  assert ieg.parse_custom_config(None) == ieg.Options(0.1, 40_000_000)
  with pytest.raises(ValueError, match='make_custom_config'):
    ieg.parse_custom_config('{"max_pixels": 5}')
  with pytest.raises(ValueError, match='max_rejected_fraction must be'):
    ieg.make_custom_config(max_rejected_fraction=2)


@pytest.mark.parametrize('buckets', [(4,), (4, 0), (4.0, 1), (1, 2, 3)])
def test_both_example_gens_check_the_buckets_alike(buckets):
  from components import text_example_gen

  for build in (
    lambda: ieg.image_example_gen('/data', train_eval_buckets=buckets),
    lambda: text_example_gen.text_example_gen(
      '/data', 'rows.csv', train_eval_buckets=buckets
    ),
  ):
    with pytest.raises(
      ValueError, match='train_eval_buckets must be two positive integers'
    ):
      build()


def test_both_example_gens_hash_into_train_and_eval():
  from components import text_example_gen

  image = ieg.image_example_gen('/data', train_eval_buckets=(3, 2))
  text = text_example_gen.text_example_gen(
    '/data', 'rows.csv', train_eval_buckets=(3, 2)
  )
  for gen, feature in ((image, 'path'), (text, 'text')):
    config = json.loads(gen.exec_properties['output_config'])['split_config']
    assert config == {
      'splits': [
        {'name': 'train', 'hash_buckets': 3},
        {'name': 'eval', 'hash_buckets': 2},
      ],
      'partition_feature_name': feature,
    }

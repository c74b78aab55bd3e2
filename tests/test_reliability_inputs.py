"""Reliability, bad input: the ExampleGens on a corpus of hostile files.

Cases already covered elsewhere, not repeated here: zero-byte files, a
truncated JPEG, a PNG named .jpg, a text file named .jpg, TIFF/WebP, an image
over max_pixels, stray files, empty class folders, one class only, the
rejected-fraction threshold (tests/test_image_example_gen.py); invalid UTF-8,
missing/extra fields, quoted newlines and commas in texts, empty labels and
texts, duplicate ids, bad JSONL (tests/test_text_example_gen.py). Each case
here is ingested correctly or rejected with its path and reason, and
read == ingested + rejected.
"""

import io
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

import helpers
from components import image_example_gen as ieg
from components import text_example_gen as teg
from modules import preprocessing

pytestmark = pytest.mark.reliability('bad input')


def _image(mode='RGB', fmt='JPEG', color=(200, 30, 30), size=(8, 8)) -> bytes:
  buf = io.BytesIO()
  Image.new(mode, size, color).save(buf, fmt)
  return buf.getvalue()


def _write(path: pathlib.Path, data: bytes) -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return data


def _tree(root: pathlib.Path, classes: Dict[str, int]) -> None:
  for index, (name, count) in enumerate(classes.items()):
    for i in range(count):
      _write(root / name / f'{i}.jpg', _image(color=(i * 9, index * 60, 7)))


def _run_images(root, out, **kwargs) -> dict:
  gen = ieg.image_example_gen(str(root), **kwargs)
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  ieg.ImageExampleGenExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  return json.loads((pathlib.Path(out) / ieg.REPORT_FILE_NAME).read_text())


def _run_texts(root, out, data_file, **kwargs) -> dict:
  gen = teg.text_example_gen(str(root), data_file, **kwargs)
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  teg.TextExampleGenExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  return json.loads((pathlib.Path(out) / teg.REPORT_FILE_NAME).read_text())


def _examples(out) -> List[Dict[str, bytes]]:
  rows = []
  for split in ('train', 'eval'):
    files = tf.io.gfile.glob(os.path.join(out, f'Split-{split}', '*.gz'))
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
      feature = tf.train.Example.FromString(record.numpy()).features.feature
      rows.append(
        {
          k: f.bytes_list.value[0]
          for k, f in feature.items()
          if f.WhichOneof('kind') == 'bytes_list'
        }
      )
  return rows


def _reasons(report: dict, key='path') -> Dict[str, str]:
  plural = 'files' if key == 'path' else 'rows'
  return {r[key]: r['reason'] for r in report[f'rejected_{plural}']}


def _adds_up(report: dict) -> None:
  counts = report['counts']
  assert counts['read'] == counts['ingested'] + counts['rejected']
  assert counts['ingested'] == sum(report['ingested_per_class'].values())
  assert counts['ingested'] == sum(report['ingested_per_split'].values())


def test_colour_modes_are_ingested_and_decoded_as_rgb(tmp_path):
  red = Image.new('RGB', (16, 16), (220, 20, 20))
  images = {
    'colour/cmyk.jpg': red.convert('CMYK'),
    'colour/rgba.png': Image.new('RGBA', (16, 16), (20, 200, 20, 40)),
    'colour/palette.png': red.convert('P'),
    'grey/l.jpg': Image.new('L', (16, 16), 90),
    'grey/l.png': Image.new('L', (16, 16), 150),
    'grey/la.png': Image.new('LA', (16, 16), (200, 10)),
  }
  for path, image in images.items():
    buf = io.BytesIO()
    image.save(buf, 'JPEG' if path.endswith('.jpg') else 'PNG')
    _write(tmp_path / 'data' / path, buf.getvalue())

  report = _run_images(tmp_path / 'data', tmp_path / 'out')

  assert report['counts'] == {'read': 6, 'ingested': 6, 'rejected': 0}
  # Serving decodes exactly like this (modules/preprocessing.py): 3 channels,
  # the colours Pillow sees (alpha dropped, CMYK and palettes converted).
  for row in _examples(tmp_path / 'out'):
    path = row['path'].decode()
    decoded = preprocessing.decode_and_resize(tf.constant([row['image']]), 16)
    assert decoded.shape == (1, 16, 16, 3)
    expected = np.asarray(images[path].convert('RGB'), np.float32)
    np.testing.assert_allclose(
      decoded[0].numpy(), expected, atol=8, err_msg=path
    )


# Pillow warns when it opens the 10^8-pixel header; max_pixels rejects it.
@pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')
def test_decompression_bombs_are_rejected_from_the_header(tmp_path):
  _tree(tmp_path / 'data', {'cat': 4, 'dog': 4})
  # 10^10 pixels: past Pillow's own bomb limit; 10^8: past max_pixels.
  _write(
    tmp_path / 'data/cat/bomb.png', helpers.png_header_only(100_000, 100_000)
  )
  _write(tmp_path / 'data/dog/big.png', helpers.png_header_only(10_000, 10_000))
  assert os.path.getsize(tmp_path / 'data/cat/bomb.png') < 200

  started = time.time()
  report = _run_images(
    tmp_path / 'data', tmp_path / 'out', max_rejected_fraction=0.5
  )

  _adds_up(report)
  assert report['counts'] == {'read': 10, 'ingested': 8, 'rejected': 2}
  reasons = _reasons(report)
  assert reasons['cat/bomb.png'].startswith(
    'image too large (possible decompression bomb): Image size '
    '(10000000000 pixels) exceeds limit'
  )
  assert reasons['dog/big.png'] == (
    'image too large (possible decompression bomb): 10000x10000 = '
    '100000000 pixels > max_pixels 40000000'
  )
  assert time.time() - started < 60  # Nothing decoded (30 GB and 300 MB).


def test_symlinks_fifos_and_undecodable_names(tmp_path):
  data, outside = tmp_path / 'data', tmp_path / 'outside'
  _tree(data, {'cat': 4, 'dog': 4})
  _write(outside / 'far.jpg', _image(color=(1, 2, 3)))
  _write(outside / 'folder/far2.jpg', _image(color=(3, 2, 1)))
  os.symlink('0.jpg', data / 'cat/alias.jpg')  # Inside the class: read.
  os.symlink('self.jpg', data / 'cat/self.jpg')
  os.symlink('missing.jpg', data / 'cat/dangling.jpg')
  os.symlink('..', data / 'cat/root_loop')  # -> data root.
  (data / 'cat/sub').mkdir()
  os.symlink('..', data / 'cat/sub/up')  # -> cat: already read.
  os.symlink('../cat', data / 'dog/cats')  # Into another class.
  os.symlink(outside / 'far.jpg', data / 'dog/far.jpg')
  os.symlink(outside / 'folder', data / 'dog/far_folder')
  os.mkfifo(data / 'dog/pipe.jpg')  # Opening it would block forever.
  _write(
    pathlib.Path(os.fsdecode(bytes(data / 'dog') + b'/bad\xff.jpg')), _image()
  )
  _write(pathlib.Path(os.fsdecode(bytes(data) + b'/\xfeclass/0.jpg')), _image())

  report = _run_images(data, tmp_path / 'out', max_rejected_fraction=0.6)

  _adds_up(report)
  assert report['counts'] == {'read': 19, 'ingested': 9, 'rejected': 10}
  assert report['ingested_per_class'] == {'cat': 5, 'dog': 4}
  real = os.path.realpath
  assert _reasons(report) == {
    'cat/self.jpg': 'symlink loop (too many levels of symbolic links)',
    'cat/dangling.jpg': (
      'broken symlink (its target missing.jpg does not exist)'
    ),
    'cat/root_loop': f'symlinked folder points to {real(data)}, elsewhere '
    'in the data root: not read, its files would count '
    'twice',
    'cat/sub/up': 'symlinked folder already read (a symlink loop or a '
    f'second link to {real(data / "cat")}): not read again',
    'dog/cats': f'symlinked folder points to {real(data / "cat")}, '
    'elsewhere in the data root: not read, its files would '
    'count twice',
    'dog/far.jpg': f'resolves outside the data root (to '
    f'{real(outside / "far.jpg")}); set '
    'allow_paths_outside_data_root to read it',
    'dog/far_folder': 'symlinked folder resolves outside the data root (to '
    f'{real(outside / "folder")}); set '
    'allow_paths_outside_data_root to read it',
    'dog/pipe.jpg': 'not a regular file (a FIFO, socket or device)',
    'dog/bad\\xff.jpg': 'name is not valid UTF-8 (shown with \\x escapes): '
    'not read',
    '\\xfeclass': 'name is not valid UTF-8 (shown with \\x escapes): not read',
  }

  # Opted in, the files outside the data root are read.
  report = _run_images(
    data,
    tmp_path / 'out2',
    max_rejected_fraction=0.6,
    allow_paths_outside_data_root=True,
  )
  _adds_up(report)
  assert report['counts'] == {'read': 19, 'ingested': 11, 'rejected': 8}
  assert report['allow_paths_outside_data_root']
  paths = {r['path'].decode() for r in _examples(tmp_path / 'out2')}
  assert {'dog/far.jpg', 'dog/far_folder/far2.jpg'} <= paths


_RUN_EXECUTOR = """
import sys
sys.path.insert(0, {project!r})
from tfx.types import standard_artifacts
from components import image_example_gen as ieg
gen = ieg.image_example_gen({data!r})
examples = standard_artifacts.Examples()
examples.uri = {out!r}
ieg.ImageExampleGenExecutor().Do({{}}, {{'examples': [examples]}},
                                 dict(gen.exec_properties))
"""


def test_unreadable_files_are_rejected(tmp_path):
  data, out = tmp_path / 'data', tmp_path / 'out'
  _tree(data, {'cat': 6, 'dog': 6})
  _write(data / 'cat/secret.jpg', _image())
  (data / 'cat/secret.jpg').chmod(0o000)
  # Root reads anything; the executor runs without that power.
  process = subprocess.run(
    [
      sys.executable,
      '-c',
      _RUN_EXECUTOR.format(
        project=str(pathlib.Path(__file__).resolve().parents[1]),
        data=str(data),
        out=str(out),
      ),
    ],
    preexec_fn=helpers.drop_root_file_access if os.geteuid() == 0 else None,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  report = json.loads((out / ieg.REPORT_FILE_NAME).read_text())
  _adds_up(report)
  assert report['counts'] == {'read': 13, 'ingested': 12, 'rejected': 1}
  reason = _reasons(report)['cat/secret.jpg']
  assert reason.startswith('unreadable file: ') and reason.endswith(
    'Permission denied'
  ), reason


def test_manifest_rows(tmp_path):
  data = tmp_path / 'data'
  _tree(data, {'cat': 3, 'dog': 3})
  _write(data / 'odd/new\nline.jpg', _image(color=(5, 5, 5)))
  _write(tmp_path / 'outside.jpg', _image(color=(9, 9, 9)))
  rows = [
    b'path,label,source',
    b'cat/0.jpg,cat,a',
    b'"odd/new\nline.jpg",dog,"quoted, with a newline"',  # Lines 3-4.
    b'cat/1.jpg,cat',  # Line 5: a field missing.
    b'cat/2.jpg,cat,a,extra',  # Line 6: one too many.
    b'dog/0.jpg,d\xf6g,latin-1',  # Line 7.
    b'../outside.jpg,dog,b',
    b'dog/1.jpg,  dog\xc2\xa0 ,c',  # No-break space: still 'dog'.
    b'dog/2.jpg,"cat\t",d',
  ]
  (data / 'labels.csv').write_bytes(b'\n'.join(rows) + b'\n')

  report = _run_images(
    data, tmp_path / 'out', manifest='labels.csv', max_rejected_fraction=0.6
  )

  _adds_up(report)
  assert report['counts'] == {'read': 8, 'ingested': 4, 'rejected': 4}
  assert _reasons(report) == {
    'cat/1.jpg': 'manifest line 5 has 2 fields, the header has 3',
    'cat/2.jpg': 'manifest line 6 has 4 fields, the header has 3',
    'dog/0.jpg': 'invalid UTF-8 in manifest line 7',
    '../outside.jpg': "path escapes the data root via '..'",
  }
  assert report['ingested_per_class'] == {'cat': 2, 'dog': 2}
  assert report['label_spellings'] == {
    'cat': ['cat', 'cat\t'],
    'dog': ['  dog\xa0 ', 'dog'],
  }
  labels = {
    r['path'].decode(): r['label'].decode() for r in _examples(tmp_path / 'out')
  }
  assert labels == {
    'cat/0.jpg': 'cat',
    'odd/new\nline.jpg': 'dog',
    'dog/1.jpg': 'dog',
    'dog/2.jpg': 'cat',
  }


@pytest.mark.reliability('security')
def test_manifest_paths_cannot_escape_the_data_root_unless_allowed(tmp_path):
  data = tmp_path / 'data'
  _tree(data, {'cat': 3, 'dog': 3})
  outside = _write(tmp_path / 'outside.jpg', _image(color=(9, 9, 9)))
  os.symlink('../../outside.jpg', data / 'cat/link.jpg')  # Looks inside.
  (data / 'labels.csv').write_text(
    'path,label\ncat/0.jpg,cat\ndog/0.jpg,dog\n../outside.jpg,dog\n'
    f'{tmp_path / "outside.jpg"},cat\ncat/link.jpg,cat\n'
  )

  report = _run_images(
    data, tmp_path / 'out', manifest='labels.csv', max_rejected_fraction=0.8
  )
  assert report['counts'] == {'read': 5, 'ingested': 2, 'rejected': 3}
  assert _reasons(report) == {
    '../outside.jpg': "path escapes the data root via '..'",
    str(
      tmp_path / 'outside.jpg'
    ): 'absolute path in manifest: paths must be relative to the data root',
    'cat/link.jpg': f'resolves outside the data root (to '
    f'{os.path.realpath(tmp_path / "outside.jpg")}); set '
    'allow_paths_outside_data_root to read it',
  }
  assert not report['allow_paths_outside_data_root']

  # An explicit opt-in reads them.
  report = _run_images(
    data,
    tmp_path / 'out2',
    manifest='labels.csv',
    allow_paths_outside_data_root=True,
  )
  assert report['counts'] == {'read': 5, 'ingested': 5, 'rejected': 0}
  images = {
    r['path'].decode(): r['image'] for r in _examples(tmp_path / 'out2')
  }
  assert images['../outside.jpg'] == images['cat/link.jpg'] == outside


def test_label_spellings_are_one_class(tmp_path):
  data = tmp_path / 'data'
  # NFC and NFD spellings of 'café', trailing and no-break spaces.
  _tree(
    data,
    {
      'caf\u00e9': 3,
      'cafe\u0301': 2,
      'dog': 3,
      'dog ': 1,
      '\u00a0dog': 1,
      'Dog': 2,
    },
  )

  report = _run_images(data, tmp_path / 'out')

  assert report['ingested_per_class'] == {'Dog': 2, 'caf\u00e9': 5, 'dog': 5}
  assert report['label_spellings'] == {
    'caf\u00e9': ['cafe\u0301', 'caf\u00e9'],
    'dog': ['dog', 'dog ', '\u00a0dog'],
  }
  labels = {r['label'].decode() for r in _examples(tmp_path / 'out')}
  assert labels == {'Dog', 'caf\u00e9', 'dog'}

  texts = ['text,label'] + [
    f'text {i},{label}'
    for i, label in enumerate(
      ['pos', ' pos', 'pos\u00a0', 'neg', 'ne\u0301g', 'neg', 'né g']
    )
  ]
  (tmp_path / 'rows.csv').write_text('\n'.join(texts) + '\n')
  report = _run_texts(tmp_path, tmp_path / 'text_out', 'rows.csv')
  assert report['ingested_per_class'] == {
    'neg': 2,
    'né g': 1,
    'n\u00e9g': 1,
    'pos': 3,
  }
  assert report['label_spellings'] == {
    'n\u00e9g': ['ne\u0301g'],
    'pos': [' pos', 'pos', 'pos\u00a0'],
  }


def test_class_with_one_example(tmp_path):
  _tree(tmp_path / 'data', {'cat': 10, 'dog': 10, 'rare': 1})

  report = _run_images(tmp_path / 'data', tmp_path / 'out')

  assert report['ingested_per_class'] == {'cat': 10, 'dog': 10, 'rare': 1}
  missing = report['classes_missing_from_split']
  assert sum(split == ['rare'] for split in missing.values()) == 1
  rare = [r for r in _examples(tmp_path / 'out') if r['label'] == b'rare']
  assert [r['path'] for r in rare] == [b'rare/0.jpg']


def test_empty_eval_split_fails_when_every_split_is_required(tmp_path):
  """The pipeline requires every split: an empty eval split blesses nothing."""
  _tree(tmp_path / 'data', {'cat': 2, 'dog': 2})  # All four hash to train.
  report = _run_images(tmp_path / 'data', tmp_path / 'out')
  assert report['ingested_per_split'] == {'train': 4, 'eval': 0}

  with pytest.raises(ValueError) as error:
    _run_images(tmp_path / 'data', tmp_path / 'out2', require_every_split=True)
  assert str(error.value).startswith(
    f'The eval split(s) got no images under data root {tmp_path / "data"}: '
    'the model could not be evaluated, so it could not be blessed. 4 images '
    "went to {'train': 4, 'eval': 0}"
  )

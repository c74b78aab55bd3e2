"""Tests for components.text_example_gen: CSV, JSONL and image+text rows.

They run the real executor (Beam DirectRunner) on small files written by the
tests, with exec_properties taken from the factory-built component: CSV
(several text columns, ids, quoting), JSONL, image+text rows; every bad-row
case with its reason; the bundled CSV and JSONL give the same examples.
"""

import io
import json
import os
import pathlib
from typing import Dict, List

from PIL import Image
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components import text_example_gen as teg


def _run(root: pathlib.Path, out: pathlib.Path, data_file: str, **kwargs):
  """Runs the executor as the factory configures it; returns the report."""
  gen = teg.text_example_gen(str(root), data_file, **kwargs)
  examples = standard_artifacts.Examples()
  examples.uri = str(out)
  teg.TextExampleGenExecutor().Do(
    {}, {'examples': [examples]}, dict(gen.exec_properties)
  )
  return json.loads((out / teg.REPORT_FILE_NAME).read_text())


def _rows(out: pathlib.Path) -> List[Dict[str, bytes]]:
  """Every Example of both splits: its bytes features, text_length, split."""
  rows = []
  for split in ('train', 'eval'):
    files = tf.io.gfile.glob(os.path.join(out, f'Split-{split}', '*.gz'))
    for record in tf.data.TFRecordDataset(files, compression_type='GZIP'):
      example = tf.train.Example.FromString(record.numpy())
      # The same bytes on every run (the Trainer's carve hashes them).
      assert record.numpy() == example.SerializeToString(deterministic=True)
      features = example.features.feature
      rows.append(
        {
          'split': split,
          **{
            k: f.bytes_list.value[0]
            for k, f in features.items()
            if f.WhichOneof('kind') == 'bytes_list'
          },
          'text_length': features['text_length'].int64_list.value[0],
        }
      )
  return rows


def _reasons(report: dict) -> Dict[str, str]:
  return {r['row']: r['reason'] for r in report['rejected_rows']}


def _image_bytes(fmt='PNG', color=(10, 200, 30)) -> bytes:
  buf = io.BytesIO()
  Image.new('RGB', (8, 8), color).save(buf, fmt)
  return buf.getvalue()


def test_csv_columns_ids_and_text_splits(tmp_path):
  lines = ['id,title,body,sentiment,notes']
  texts = {}
  for i in range(30):
    label = 'pos' if i % 2 else 'neg'
    lines.append(f'r{i},Title {i},"Body, with comma\n{i}",{label},x')
    texts[f'r{i}'] = f'Title {i}\nBody, with comma\n{i}'
  (tmp_path / 'reviews.csv').write_text('\n'.join(lines) + '\n')

  report = _run(
    tmp_path,
    tmp_path / 'out',
    'reviews.csv',
    text_columns=('title', 'body'),
    label_column='sentiment',
    id_column='id',
  )

  assert report['counts'] == {'read': 30, 'ingested': 30, 'rejected': 0}
  assert report['ingested_per_class'] == {'neg': 15, 'pos': 15}
  rows = _rows(tmp_path / 'out')
  assert {r['id'].decode(): r['text'].decode() for r in rows} == texts
  assert set(rows[0]) == {'split', 'id', 'text', 'label', 'text_length'}
  assert all(r['text_length'] == len(r['text'].decode()) for r in rows)
  assert 0 < report['ingested_per_split']['eval'] < 15
  # Rerunning with the rows reordered and renamed keeps each text's split.
  reordered = [lines[0]] + [l.replace(',r', ',x') for l in lines[:0:-1]]
  (tmp_path / 'reviews.csv').write_text('\n'.join(reordered) + '\n')
  _run(
    tmp_path,
    tmp_path / 'out2',
    'reviews.csv',
    text_columns=('title', 'body'),
    label_column='sentiment',
  )
  split_of = {r['text']: r['split'] for r in rows}
  assert {r['text']: r['split'] for r in _rows(tmp_path / 'out2')} == split_of


def test_bad_csv_rows_are_counted_with_reasons(tmp_path):
  good = [f'{i},good text {i},{"a" if i % 2 else "b"}' for i in range(16)]
  bad = [
    b'100,caf\xe9 latin-1,a',  # Invalid UTF-8.
    b'101,   ,a',  # Whitespace-only text.
    b'102,no label,',  # Empty label.
    b'103,too,many,fields',
    b'104,too few',
    b'5,duplicate id,a',
  ]
  data = (
    b'id,text,label\n' + b'\n'.join([g.encode() for g in good] + bad) + b'\n\n'
  )
  (tmp_path / 'rows.csv').write_bytes(data)

  report = _run(
    tmp_path,
    tmp_path / 'out',
    'rows.csv',
    id_column='id',
    max_rejected_fraction=0.5,
  )

  assert report['counts'] == {'read': 22, 'ingested': 16, 'rejected': 6}
  assert _reasons(report) == {
    'rows.csv:18': "invalid UTF-8 in column 'text' (byte 0xe9 at byte 3)",
    'rows.csv:19': "empty text in column 'text'",
    'rows.csv:20': "empty label in column 'label'",
    'rows.csv:21': 'row has 4 fields, the header has 3',
    'rows.csv:22': 'row has 2 fields, the header has 3',
    'rows.csv:23': "duplicate id '5' (first at rows.csv:7)",
  }
  assert len(_rows(tmp_path / 'out')) == 16


def test_jsonl(tmp_path):
  lines = [
    json.dumps({'text': f'sentence {i}', 'label': i % 2}) for i in range(10)
  ]
  lines += [
    '{"text": "unterminated',
    '["not", "an", "object"]',
    json.dumps({'text': ['a', 'list'], 'label': 1}),
    json.dumps({'label': 1}),
    json.dumps({'text': 'null label', 'label': None}),
    json.dumps({'text': 'lone \ud800 surrogate', 'label': 0}),
  ]
  data = '\n'.join(lines).encode() + b'\n{"text": "\xff", "label": 1}\n'
  (tmp_path / 'data.jsonl').write_bytes(data)

  report = _run(
    tmp_path, tmp_path / 'out', 'data.jsonl', max_rejected_fraction=0.5
  )

  assert report['counts'] == {'read': 17, 'ingested': 10, 'rejected': 7}
  assert report['ingested_per_class'] == {'0': 5, '1': 5}
  reasons = _reasons(report)
  assert reasons['data.jsonl:11'].startswith('not valid JSON: Unterminated')
  assert {k: v for k, v in reasons.items() if k != 'data.jsonl:11'} == {
    'data.jsonl:12': 'not a JSON object',
    'data.jsonl:13': "column 'text' holds a list, not a string",
    'data.jsonl:14': "missing value in column 'text'",
    'data.jsonl:15': "missing value in column 'label'",
    # A lone surrogate escape is not valid UTF-8 either (0xed starts it).
    'data.jsonl:16': "invalid UTF-8 in column 'text' (byte 0xed at byte 5)",
    'data.jsonl:17': 'invalid UTF-8 (byte 0xff at byte 10)',
  }
  ids = sorted(r['id'].decode() for r in _rows(tmp_path / 'out'))
  assert ids == sorted(f'data.jsonl:{i}' for i in range(1, 11))


def test_image_text_manifest(tmp_path):
  images = {}
  lines = ['image,caption,label']
  for i in range(12):
    label = 'red' if i < 6 else 'green'
    path = f'img/{label}_{i}.png'
    images[path] = _image_bytes(
      color=(200, 0, 0) if label == 'red' else (0, 200, 0)
    )
    (tmp_path / path).parent.mkdir(exist_ok=True)
    (tmp_path / path).write_bytes(images[path])
    # An image+text row may have an empty text: the image is an example.
    lines.append(f'./{path},{"" if i == 11 else f"a {label} square"},{label}')
  (tmp_path / 'img/zero.png').write_bytes(b'')
  lines += [
    'img/zero.png,empty file,red',
    'img/missing.png,gone,red',
    '../escape.png,outside,green',
    ',no image,green',
  ]
  (tmp_path / 'manifest.csv').write_text('\n'.join(lines) + '\n')

  report = _run(
    tmp_path,
    tmp_path / 'out',
    'manifest.csv',
    text_columns=('caption',),
    image_column='image',
    max_rejected_fraction=0.5,
  )

  assert report['counts'] == {'read': 16, 'ingested': 12, 'rejected': 4}
  assert _reasons(report) == {
    'manifest.csv:14': 'img/zero.png: zero-byte file',
    'manifest.csv:15': 'img/missing.png: file not found',
    'manifest.csv:16': "../escape.png: path escapes the data root via '..'",
    'manifest.csv:17': "empty image path in column 'image'",
  }
  rows = _rows(tmp_path / 'out')
  assert {r['path'].decode(): r['image'] for r in rows} == images
  for row in rows:
    expected = (
      ''
      if row['path'] == b'img/green_11.png'
      else f'a {row["label"].decode()} square'
    )
    assert row['text'].decode() == expected
    assert row['text_length'] == len(expected)


def test_errors(tmp_path):
  (tmp_path / 'a.csv').write_text('text,class\nhello,x\n')
  with pytest.raises(
    ValueError,
    match=r"needs the columns \['text', "
    r"'label'\].*\['label'\] missing, found \['text', "
    r"'class'\]",
  ):
    _run(tmp_path, tmp_path / 'out', 'a.csv')
  with pytest.raises(ValueError, match=r"'b.csv' not found under data root"):
    _run(tmp_path, tmp_path / 'out', 'b.csv')
  with pytest.raises(ValueError, match='.csv or .jsonl'):
    teg.text_example_gen(str(tmp_path), 'a.tsv')
  with pytest.raises(ValueError, match='one role only'):
    teg.text_example_gen(str(tmp_path), 'a.csv', text_columns=['label'])
  (tmp_path / 'one.csv').write_text('text,label\n' + 'hi there,x\n' * 5)
  with pytest.raises(
    ValueError, match=r"Only one class \('x'\) has valid rows"
  ):
    _run(tmp_path, tmp_path / 'out', 'one.csv')
  (tmp_path / 'bad.csv').write_text(
    'text,label\n' + 'fine,x\nfine too,y\n' * 4 + ',x\n,y\n'
  )
  with pytest.raises(
    ValueError,
    match=r'2 of 10 rows \(20.0%\) under data '
    r'root .* were rejected, more than '
    r'max_rejected_fraction=0.1.*bad.csv:10 \(empty text',
  ):
    _run(tmp_path, tmp_path / 'out', 'bad.csv')


def test_custom_config_round_trip():
  gen = teg.text_example_gen(
    '/data',
    'x.jsonl',
    text_columns=['a', 'b'],
    label_column='y',
    id_column='key',
    max_rejected_fraction=0.2,
  )
  assert teg.parse_custom_config(gen.exec_properties['custom_config']) == (
    teg.Options(
      text_columns=('a', 'b'),
      label_column='y',
      id_column='key',
      max_rejected_fraction=0.2,
    )
  )
  assert teg.parse_custom_config(None) == teg.Options()


def test_bundled_csv_and_jsonl_agree(tmp_path):
  data = (
    pathlib.Path(__file__).resolve().parents[1] / 'data' / 'movie_sentiment'
  )
  rows = {}
  for name in ('reviews.csv', 'reviews.jsonl'):
    report = _run(data, tmp_path / name, name, id_column='id')
    assert report['counts'] == {'read': 500, 'ingested': 500, 'rejected': 0}
    assert report['ingested_per_class'] == {'negative': 250, 'positive': 250}
    rows[name] = sorted(
      tuple(sorted(r.items())) for r in _rows(tmp_path / name)
    )
  assert rows['reviews.csv'] == rows['reviews.jsonl']

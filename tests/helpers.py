"""Helpers for tests that run the real pipeline and load what it produced."""

import ctypes
import functools
import glob
import io
import os
import struct
from typing import Dict, List, Tuple
import zlib

from PIL import Image
import tensorflow as tf
from tfx import v1 as tfx

from modules import features
from modules import trainer

# Small but real: the demo's two phases, shortened to keep the suite fast.
E2E_TRAINER = {'phase1_epochs': 3, 'phase2_epochs': 1}
# Image+text: fine-tuning both towers; at the default 1e-4, 20 MobileNet
# layers undo part of what the head learned on this small set
# (see docs/performance.md).
FUSION_TRAINER = {
  'phase1_epochs': 10,
  'phase2_epochs': 1,
  'phase2_learning_rate': 1e-5,
  'max_length': 16,
}


def latest_artifact(pipeline_root: str, component: str, output: str) -> str:
  """The newest output directory of `component` (TFX names them by id)."""
  dirs = glob.glob(os.path.join(pipeline_root, component, output, '*'))
  dirs = [d for d in dirs if os.path.basename(d).isdigit()]
  return max(dirs, key=lambda d: int(os.path.basename(d)))


def split_examples(pipeline_root: str, split: str) -> List[Tuple[str, str]]:
  """(relative path, label) of every example ExampleGen put in `split`."""
  return artifact_examples(
    latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples'), split
  )


def artifact_examples(examples: str, split: str) -> List[Tuple[str, str]]:
  """(relative path, label) of each example in an Examples artifact's split."""
  records = tf.data.TFRecordDataset(
    glob.glob(os.path.join(examples, f'Split-{split}', '*')),
    compression_type='GZIP',
  )
  result = []
  for record in records:
    example = tf.train.Example.FromString(record.numpy())
    feature = example.features.feature
    result.append(
      (
        feature[features.PATH_KEY].bytes_list.value[0].decode(),
        feature[features.LABEL_KEY].bytes_list.value[0].decode(),
      )
    )
  return result


def classify(
  saved_model_dir: str, data_root: str, paths: List[str]
) -> Dict[str, tf.Tensor]:
  """Runs `serving_default` of a SavedModel on the raw bytes of `paths`."""
  serve = tf.saved_model.load(saved_model_dir).signatures['serving_default']
  image_bytes = [
    tf.io.read_file(os.path.join(data_root, p)).numpy() for p in paths
  ]
  return serve(image_bytes=tf.constant(image_bytes))


def accuracy(
  saved_model_dir: str, data_root: str, examples: List[Tuple[str, str]]
) -> float:
  outputs = classify(saved_model_dir, data_root, [p for p, _ in examples])
  predicted = [label.decode() for label in outputs['label'].numpy()]
  return sum(p == l for p, (_, l) in zip(predicted, examples)) / len(examples)


def trainer_fn_args(
  pipeline_root: str, output_dir: str, custom_config: Dict
) -> tfx.components.FnArgs:
  """FnArgs for calling run_fn on the pipeline's own examples and graph."""
  examples = latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples')
  return tfx.components.FnArgs(
    train_files=[os.path.join(examples, 'Split-train', '*')],
    eval_files=[os.path.join(examples, 'Split-eval', '*')],
    transform_output=latest_artifact(
      pipeline_root, 'Transform', 'transform_graph'
    ),
    serving_model_dir=os.path.join(output_dir, 'serving_model'),
    model_run_dir=os.path.join(output_dir, 'model_run'),
    custom_config=custom_config,
  )


def train_directly(
  pipeline_root: str, output_dir: str, custom_config: Dict
) -> str:
  """Runs the real run_fn outside the pipeline; returns the SavedModel dir."""
  fn_args = trainer_fn_args(pipeline_root, output_dir, custom_config)
  trainer.run_fn(fn_args)
  return fn_args.serving_model_dir


def split_rows(pipeline_root: str, split: str) -> List[Dict[str, str]]:
  """Every example ExampleGen put in `split`, its string features decoded."""
  return artifact_rows(
    latest_artifact(pipeline_root, 'FileBasedExampleGen', 'examples'), split
  )


def artifact_rows(examples: str, split: str) -> List[Dict[str, str]]:
  """Every example of an Examples artifact's split, string features decoded."""
  records = tf.data.TFRecordDataset(
    glob.glob(os.path.join(examples, f'Split-{split}', '*')),
    compression_type='GZIP',
  )
  rows = []
  for record in records:
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    rows.append(
      {
        name: value.bytes_list.value[0].decode()
        for name, value in feature.items()
        if name != 'image' and value.WhichOneof('kind') == 'bytes_list'
      }
    )
  return rows


def serve(saved_model_dir: str, **inputs) -> Dict[str, tf.Tensor]:
  """Calls `serving_default` of a SavedModel (text models included)."""
  import tensorflow_text  # noqa: F401 (registers its ops)

  signature = tf.saved_model.load(saved_model_dir).signatures['serving_default']
  return signature(**{k: tf.constant(v) for k, v in inputs.items()})


def bag_of_words_accuracy(
  train: List[Dict[str, str]], test: List[Dict[str, str]]
) -> float:
  """TF-IDF (1-2 grams) + logistic regression, C chosen by 5-fold CV."""
  from sklearn import feature_extraction
  from sklearn import linear_model
  from sklearn import pipeline

  model = pipeline.make_pipeline(
    feature_extraction.text.TfidfVectorizer(
      ngram_range=(1, 2), sublinear_tf=True
    ),
    linear_model.LogisticRegressionCV(
      Cs=[0.1, 1, 10, 100], cv=5, max_iter=2000
    ),
  )
  model.fit([r['text'] for r in train], [r['label'] for r in train])
  return model.score([r['text'] for r in test], [r['label'] for r in test])


def drop_root_file_access() -> None:
  """Makes root obey file permissions in the exec'd process (Linux)."""
  libc = ctypes.CDLL(None, use_errno=True)
  for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH.
    if libc.prctl(24, capability, 0, 0, 0):  # PR_CAPBSET_DROP.
      raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP) failed')


# The bad-file corpus: files that ingestion rejects and serving must judge.
def image_bytes(
  fmt: str = 'JPEG', size=(8, 8), color=(200, 30, 30), mode: str = 'RGB'
) -> bytes:
  buf = io.BytesIO()
  Image.new(mode, size, color).save(buf, fmt)
  return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (
    struct.pack('>I', len(data))
    + kind
    + data
    + struct.pack('>I', zlib.crc32(kind + data))
  )


def png_header_only(width: int, height: int) -> bytes:
  """A PNG that declares width x height but holds almost no pixel data."""
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + _png_chunk(b'IHDR', header)
    + _png_chunk(b'IDAT', zlib.compress(b'\x00' * 64))
    + _png_chunk(b'IEND', b'')
  )


@functools.lru_cache(maxsize=None)
def png_bomb(side: int) -> bytes:
  """A valid greyscale PNG, side x side black pixels, deflated (a real bomb).

  20000 x 20000 is about 400 KB on disk and 1.2 GB decoded as RGB.
  """
  header = struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)
  compressor = zlib.compressobj(9)
  row = b'\x00' * (side + 1)  # Filter byte 0, then the row.
  rows_per_chunk = max(1, 2**22 // len(row))
  data = []
  for start in range(0, side, rows_per_chunk):
    data.append(compressor.compress(row * min(rows_per_chunk, side - start)))
  data.append(compressor.flush())
  return (
    b'\x89PNG\r\n\x1a\n'
    + _png_chunk(b'IHDR', header)
    + _png_chunk(b'IDAT', b''.join(data))
    + _png_chunk(b'IEND', b'')
  )


def jpeg_claiming(width: int, height: int) -> bytes:
  """A small baseline JPEG whose frame header (SOF0) claims width x height."""
  data = bytearray(image_bytes('JPEG'))
  sof = data.index(b'\xff\xc0')
  data[sof + 5 : sof + 9] = struct.pack('>HH', height, width)
  return bytes(data)


def truncated_jpeg() -> bytes:
  """A noisy JPEG cut at two thirds: its header is whole, its body is not."""
  noise = Image.frombytes(
    'RGB', (24, 24), bytes((i * 7919) % 251 for i in range(24 * 24 * 3))
  )
  buf = io.BytesIO()
  noise.save(buf, 'JPEG', quality=95)
  return buf.getvalue()[: len(buf.getvalue()) * 2 // 3]


def bad_image_corpus() -> Dict[str, Tuple[bytes, str]]:
  """File name -> (bytes, the serving status it must get)."""
  png = image_bytes('PNG')
  html = b'<!DOCTYPE html><html><body><img src="cat.jpg"></body></html>\n'
  bad_body = bytearray(png)
  idat = bad_body.index(b'IDAT')
  bad_body[idat + 4 : idat + 12] = b'\xde\xad\xbe\xef' * 2
  return {
    'zero.jpg': (b'', 'empty'),
    'page.jpg': (html, 'unknown_format'),
    'text.jpg': (b'not an image at all', 'unknown_format'),
    'photo.webp': (image_bytes('WEBP'), 'unknown_format'),
    'scan.tiff': (image_bytes('TIFF'), 'unknown_format'),
    'header_30000.png': (png_header_only(30000, 30000), 'too_large'),
    'bomb_20000.png': (png_bomb(20000), 'too_large'),
    'header_20000.jpg': (jpeg_claiming(20000, 20000), 'too_large'),
    'screen_65535.gif': (b'GIF89a\xff\xff\xff\xff\x00\x00\x00;', 'too_large'),
    'header_20000.bmp': (
      b'BM' + bytes(16) + struct.pack('<ii', 20000, 20000) + bytes(8),
      'too_large',
    ),
    'truncated.jpg': (truncated_jpeg(), 'corrupt'),
    'bad_body.png': (bytes(bad_body), 'corrupt'),
    'cut_header.png': (png[:20], 'corrupt'),
    'header_only.gif': (image_bytes('GIF')[:20], 'corrupt'),
  }

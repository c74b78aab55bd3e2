"""Shared helpers of the benchmarks: setup, metric lines, data, splits, and
per-component time and memory of a LocalDagRunner run.

Every benchmark prints its figures as `name value` lines (see `metric`) and
the machine's load average (from `uptime`) before and after it runs, because
the 2-core machine they were measured on is shared.
"""

import gzip
import os
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

os.environ['TF_USE_LEGACY_KERAS'] = '1'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_ROOT)
sys.path.insert(1, os.path.join(PROJECT_ROOT, 'tests'))  # tests/helpers.py

import numpy as np
from PIL import Image
import tensorflow as tf
import tf_keras as keras
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from components import image_example_gen
from modules import preprocessing

DEMO_DATA = os.path.join(PROJECT_ROOT, 'data', 'fashion_demo')
SEED = 42
IMAGE_SIZE = preprocessing.DEFAULT_IMAGE_SIZE
BACKBONE, WEIGHTS = 'MobileNet', 'offline'

# Debian's `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist).
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = (
  't_shirt',
  'trouser',
  'pullover',
  'dress',
  'coat',
  'sandal',
  'shirt',
  'sneaker',
  'bag',
  'ankle_boot',
)

# (path relative to the data root, POSIX separators; class name)
Example = Tuple[str, str]


def metric(name: str, value) -> None:
  """Prints one figure as `name value`."""
  if isinstance(value, float):
    value = f'{value:.4f}'
  print(f'{name} {value}', flush=True)


def load_average(when: str) -> None:
  """Prints `uptime` and its 1/5/15-minute load average as a metric line."""
  uptime = subprocess.run(
    ['uptime'], capture_output=True, text=True, check=True
  ).stdout.strip()
  print(f'# uptime ({when}): {uptime}', flush=True)
  metric(
    f'load_average_{when}',
    uptime.rsplit('load average:', 1)[-1].strip().replace(',', ''),
  )


class Timer:
  """`with Timer() as t: ...` then `t.seconds`."""

  def __enter__(self):
    self._start = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._start


def list_images(data_root: str) -> List[Example]:
  """Every file below data_root/<class>/, as ExampleGen names them, sorted."""
  result = []
  for label in sorted(os.listdir(data_root)):
    folder = os.path.join(data_root, label)
    for directory, _, names in os.walk(folder):
      sub = os.path.relpath(directory, folder).replace(os.sep, '/')
      for name in names:
        result.append(
          (posixpath.normpath(posixpath.join(label, sub, name)), label)
        )
  return sorted(result)


def pipeline_split(data_root: str) -> Dict[str, List[Example]]:
  """The train/eval split ExampleGen makes of a folder-per-class tree.

  Calls TFX's own partition function on the `path` feature with the output
  config that `image_example_gen` builds, so it is the pipeline's split.
  """
  component = image_example_gen.image_example_gen(data_root)
  split_config = proto_utils.json_to_proto(
    component.exec_properties['output_config'], example_gen_pb2.Output()
  ).split_config
  buckets = np.cumsum([s.hash_buckets for s in split_config.splits]).tolist()
  names = [s.name for s in split_config.splits]
  result = {name: [] for name in names}
  for path, label in list_images(data_root):
    example = tf.train.Example(
      features=tf.train.Features(
        feature={
          image_example_gen.PATH_FEATURE: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[path.encode()])
          )
        }
      )
    )
    index = base_example_gen_executor._PartitionFn(
      example, len(buckets), buckets, split_config
    )
    result[names[index]].append((path, label))
  return result


def image_dataset(
  data_root: str,
  examples: List[Example],
  class_names: List[str],
  batch_size: int,
  shuffle: bool,
  image_size: int = IMAGE_SIZE,
  seed: int = SEED,
) -> tf.data.Dataset:
  """(image, label index) batches decoded in a parallel map, like the Trainer.

  The structure of modules/trainer.make_dataset (shuffle, batch, parallel
  decode with preprocessing.decode_and_resize, prefetch), on files.
  """
  paths = [os.path.join(data_root, p) for p, _ in examples]
  labels = [class_names.index(label) for _, label in examples]
  dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
  if shuffle:
    dataset = dataset.shuffle(
      len(paths), seed=seed, reshuffle_each_iteration=True
    )

  def _load(batch_paths, batch_labels):
    encoded = tf.map_fn(tf.io.read_file, batch_paths)
    return (
      preprocessing.decode_and_resize(encoded, image_size),
      tf.cast(batch_labels, tf.int64),
    )

  return (
    dataset.batch(batch_size)
    .map(_load, num_parallel_calls=tf.data.AUTOTUNE)
    .prefetch(tf.data.AUTOTUNE)
  )


def replicate_tree(
  source: str, target: str, copies: int, pixels: Optional[int] = None
) -> int:
  """Writes `copies` distinct versions of every image of `source` to `target`.

  Copy 0 is the original file; copy c > 0 is the image rolled by c // 28
  rows and c % 28 columns and re-encoded in its own format (JPEG at quality
  95, as data/build_fashion_demo.py wrote them), so every file is distinct
  and about the original's size. With `pixels`, every copy (0 included) is
  first resized to pixels x pixels, for larger files.

  Returns:
    The total bytes of the files written (the encoded input bytes).
  """
  total = 0
  for path, _ in list_images(source):
    os.makedirs(os.path.dirname(os.path.join(target, path)), exist_ok=True)
    stem, ext = os.path.splitext(path)
    with Image.open(os.path.join(source, path)) as image:
      fmt = image.format
      if pixels:
        image = image.resize((pixels, pixels), Image.BILINEAR)
      original = np.asarray(image)
    for c in range(copies):
      out = os.path.join(target, f'{stem}_v{c:03d}{ext}' if c else path)
      if c == 0 and not pixels:
        shutil.copyfile(os.path.join(source, path), out)
      else:
        Image.fromarray(np.roll(original, (c // 28, c % 28), axis=(0, 1))).save(
          out, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {})
        )
      total += os.path.getsize(out)
  return total


def tree_bytes(root: str) -> int:
  """Total size of the files below root."""
  return sum(
    os.path.getsize(os.path.join(d, n))
    for d, _, names in os.walk(root)
    for n in names
  )


def set_seed(seed: int = SEED) -> None:
  keras.utils.set_random_seed(seed)


def fashion_mnist(parts=('train', 't10k')) -> Tuple[np.ndarray, np.ndarray]:
  """(images Nx28x28 uint8, labels) of the Debian package's `parts`."""
  images, labels = [], []
  for part in parts:
    path = os.path.join(FASHION_MNIST, f'{part}-images-idx3-ubyte.gz')
    if not os.path.exists(path):
      sys.exit(f'{path} not found: apt-get install dataset-fashion-mnist')
    with gzip.open(path) as f:
      images.append(np.frombuffer(f.read(), np.uint8, offset=16))
    with gzip.open(
      os.path.join(FASHION_MNIST, f'{part}-labels-idx1-ubyte.gz')
    ) as f:
      labels.append(np.frombuffer(f.read(), np.uint8, offset=8))
  return np.concatenate(images).reshape(-1, 28, 28), np.concatenate(labels)


def process_tree_memory_mib() -> Tuple[float, float]:
  """(RSS, PSS) summed over this process and all its descendants, MiB.

  RSS counts pages shared by several processes (TensorFlow's libraries)
  once per process; PSS splits them (the tree's real footprint).
  """
  pids, rss, pss = [os.getpid()], 0, 0
  while pids:
    pid = pids.pop()
    try:
      with open(f'/proc/{pid}/smaps_rollup') as f:
        for line in f:
          if line.startswith('Rss:'):
            rss += int(line.split()[1])
          elif line.startswith('Pss:'):
            pss += int(line.split()[1])
      for task in os.listdir(f'/proc/{pid}/task'):
        with open(f'/proc/{pid}/task/{task}/children') as f:
          pids.extend(int(child) for child in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
      continue  # The process ended while being read.
  return rss / 1024, pss / 1024


class ComponentMonitor:
  """Per component: wall time and the process tree's peak RSS and PSS.

  `components[node]` holds `seconds`, `peak_rss_mib` and `peak_pss_mib`.
  It wraps TFX's `Launcher.launch`, which LocalDagRunner calls once per node
  (tfx/orchestration/local/local_dag_runner.py, `run_with_ir`); log records
  would not do, as none reaches the absl logger after Transform starts.
  Memory is sampled every `interval` seconds.
  """

  def __init__(self, interval: float = 0.25):
    self.components, self._node = {}, None
    self._interval = interval
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def __enter__(self):
    from tfx.orchestration.portable import launcher

    self._launch = launcher.Launcher.launch
    monitor = self

    def launch(node_launcher):
      node = node_launcher._pipeline_node.node_info.id
      monitor.components[node] = {'peak_rss_mib': 0.0, 'peak_pss_mib': 0.0}
      monitor._node, started = node, time.time()
      try:
        return monitor._launch(node_launcher)
      finally:
        monitor._node = None
        monitor.components[node]['seconds'] = time.time() - started

    launcher.Launcher.launch = launch
    self._thread.start()
    return self

  def __exit__(self, *exc):
    from tfx.orchestration.portable import launcher

    launcher.Launcher.launch = self._launch
    self._done.set()
    self._thread.join()

  def _sample(self):
    while not self._done.wait(self._interval):
      node = self._node
      if node:
        rss, pss = process_tree_memory_mib()
        entry = self.components[node]
        entry['peak_rss_mib'] = max(entry['peak_rss_mib'], rss)
        entry['peak_pss_mib'] = max(entry['peak_pss_mib'], pss)


def run_nodes(
  config, node_ids: Optional[Tuple[str, ...]], name: str, interval: float = 0.25
) -> dict:
  """Runs `node_ids` of `create_pipeline(config)` (all if None), uncached.

  The nodes they depend on run too (Transform waits for the data gate's
  ExampleValidator). Returns `seconds` and `components` (ComponentMonitor's
  figures).
  """
  from tfx import v1 as tfx

  from pipeline import pipeline as pipeline_lib

  nodes = pipeline_lib.create_pipeline(config).components
  if node_ids:
    wanted = set(node_ids)
    upstream = [node for node in nodes if node.id in wanted]
    while upstream:
      for up in upstream.pop().upstream_nodes:
        if up.id not in wanted:
          wanted.add(up.id)
          upstream.append(up)
    nodes = [node for node in nodes if node.id in wanted]
    for node in nodes:  # Detach the downstream nodes not run.
      for down in list(node.downstream_nodes):
        if down.id not in wanted:
          node.remove_downstream_node(down)
  with Timer() as timer, ComponentMonitor(interval) as monitor:
    tfx.orchestration.LocalDagRunner().run(
      tfx.dsl.Pipeline(
        pipeline_name=name,
        pipeline_root=config.pipeline_root,
        components=nodes,
        enable_cache=False,
        metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path
          )
        ),
        beam_pipeline_args=config.beam_pipeline_args,
      )
    )
  return {'seconds': timer.seconds, 'components': monitor.components}

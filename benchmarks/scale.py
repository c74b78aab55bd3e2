"""(f) Scale: memory, time and throughput of each component as N grows.

Data: realistic 224x224 JPEGs of about 19 KB (15-22 KB) made from Debian's
`dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`): each
garment upscaled, tinted and laid on a textured, noisy background (a bank of
smooth colour fields with a woven pattern and grain, shifted per image), in
its 10 classes. Images are kept in --work and made once; each size's data
root is hard links to the first N.

Three parts, each printing both sides of its comparison:

  data     ExampleGen, StatisticsGen, SchemaGen and Transform (as
           `create_pipeline` builds them, the pipeline's Beam defaults) at
           each of --sizes (default 2,500, 10,000, 40,000); the ratio of
           each component's peak memory at the largest over the smallest.
  workers  ExampleGen alone on --size images with the multi-process
           DirectRunner at 1 and at 2 workers; the throughput ratio.
  whole    the whole pipeline (image_size 96, phase2_epochs 0) at each of
           --sizes (default 5,000 and 20,000).

Each run is its own child process. Per run: the CPU seconds of the pipeline
process and of the Beam worker processes it started. Per component: wall
time, images per second, and the peak memory of the whole process tree (the
child and every descendant, Beam's worker processes included), sampled every
0.25 s from /proc/<pid>/smaps_rollup: `rss` sums each process's RSS (pages
shared by several processes, such as TensorFlow's libraries, counted once
per process) and `pss` splits shared pages between them (the tree's real
footprint).

  .venv/bin/python benchmarks/scale.py data|workers|whole [--sizes ...]
      [--size N] [--work DIR]
"""

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import common
import numpy as np
from PIL import Image

_SIZE = 224
_DATA_NODES = ('FileBasedExampleGen', 'StatisticsGen', 'SchemaGen', 'Transform')
_WHOLE_TRAINER = {'image_size': 96, 'phase2_epochs': 0}


def _backgrounds(rng, count: int = 32):
  """Smooth colour fields with a woven pattern and grain (float32)."""
  yy, xx = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32)
  bank = []
  for _ in range(count):
    blobs = rng.uniform(40, 215, (7, 7, 3)).astype(np.uint8)
    field = np.asarray(
      Image.fromarray(blobs).resize((_SIZE, _SIZE), Image.BILINEAR), np.float32
    )
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.3, 1.2)
    field += (22 * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy)))[
      ..., None
    ]
    field += rng.normal(0, 10, field.shape).astype(np.float32)
    bank.append(field)
  return bank


def _jpeg(garment, backgrounds, rng) -> bytes:
  """One 224x224 JPEG: the garment, tinted, on a shifted background."""
  mask = (
    np.asarray(
      Image.fromarray(garment).resize((_SIZE, _SIZE), Image.BICUBIC), np.float32
    )[..., None]
    / 255
  )
  background = np.roll(
    backgrounds[rng.integers(len(backgrounds))],
    (rng.integers(_SIZE), rng.integers(_SIZE)),
    (0, 1),
  )
  tint = rng.uniform(30, 255, 3).astype(np.float32)
  pixels = background * (1 - mask) + mask * (
    tint * (0.6 + 0.4 * mask) + 0.5 * (background - background.mean())
  )
  buf = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
    buf, 'JPEG', quality=90
  )
  return buf.getvalue()


def generate(root: str, count: int) -> None:
  """Makes root/<class>/<index>.jpg for indices below `count` (kept).

  Each image depends only on its index, so a larger size adds images.
  """
  images, labels = common.fashion_mnist()
  backgrounds = _backgrounds(np.random.default_rng(common.SEED))
  started, made = time.time(), 0
  for index in range(count):
    path = os.path.join(
      root, common.FASHION_MNIST_CLASSES[labels[index]], f'{index:06d}.jpg'
    )
    if os.path.exists(path):
      continue
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng((common.SEED, index))
    part = f'{path}.{os.getpid()}.part'  # Parts may run side by side.
    with open(part, 'wb') as f:
      f.write(_jpeg(images[index], backgrounds, rng))
    os.replace(part, path)
    made += 1
    if made % 5000 == 0:
      print(
        f'# generated {made} images in {time.time() - started:.0f} s',
        flush=True,
      )


def subset(source: str, target: str, count: int) -> str:
  """A data root of the first `count` generated images (hard links)."""
  if os.path.exists(target):
    shutil.rmtree(target)
  for name in os.listdir(source):
    os.makedirs(os.path.join(target, name))
    for file_name in os.listdir(os.path.join(source, name)):
      if file_name.endswith('.jpg') and int(file_name[:-4]) < count:
        os.link(
          os.path.join(source, name, file_name),
          os.path.join(target, name, file_name),
        )
  return target


def run_child(spec: dict) -> dict:
  """Runs the nodes `spec` names on its data root; returns the figures."""
  from pipeline import settings as settings_lib

  config = settings_lib.PipelineConfig(
    data_root=spec['data_root'],
    output_dir=spec['output_dir'],
    trainer=spec.get('trainer', {}),
    **({'beam_pipeline_args': spec['beam']} if spec.get('beam') else {}),
  )
  figures = common.run_nodes(config, spec.get('nodes'), 'scale')
  own, children = (
    resource.getrusage(who)
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
  )
  return {
    **figures,
    'beam_pipeline_args': config.beam_pipeline_args,
    # CPU seconds (user + system) of the pipeline process, and of the ended
    # processes it started (Beam's workers in the multi-process mode).
    'cpu_seconds': {
      'pipeline_process': own.ru_utime + own.ru_stime,
      'worker_processes': children.ru_utime + children.ru_stime,
    },
  }


def measure(name: str, work: str, data_root: str, images: int, **spec) -> dict:
  """Runs `run_child` in a child process; prints and returns its figures."""
  run_dir = os.path.join(work, 'runs', name)
  shutil.rmtree(run_dir, ignore_errors=True)
  os.makedirs(run_dir)
  spec = {
    'data_root': data_root,
    'output_dir': os.path.join(run_dir, 'out'),
    **spec,
  }
  result_path = os.path.join(run_dir, 'result.json')
  with open(os.path.join(run_dir, 'log.txt'), 'w') as log:
    child = subprocess.run(
      [sys.executable, __file__, '--child', json.dumps(spec), result_path],
      stdout=log,
      stderr=subprocess.STDOUT,
      check=False,
    )
  if child.returncode:
    common.metric(f'{name}_failed_exit_code', child.returncode)
    print(f'# {name}: failed, log in {run_dir}/log.txt', flush=True)
    return {}
  with open(result_path) as f:
    result = json.load(f)
  shutil.rmtree(spec['output_dir'], ignore_errors=True)
  print(f'# {name}: {result["beam_pipeline_args"]}', flush=True)
  common.metric(f'{name}_images', images)
  common.metric(f'{name}_seconds', result['seconds'])
  for process, seconds in result['cpu_seconds'].items():
    common.metric(f'{name}_{process}_cpu_seconds', seconds)
  for node, figures in result['components'].items():
    common.metric(f'{name}_{node}_seconds', figures['seconds'])
    common.metric(
      f'{name}_{node}_images_per_second', images / figures['seconds']
    )
    common.metric(f'{name}_{node}_peak_tree_rss_mib', figures['peak_rss_mib'])
    common.metric(f'{name}_{node}_peak_tree_pss_mib', figures['peak_pss_mib'])
  return result


def _peak(result: dict, key: str, nodes=None) -> float:
  return max(
    figures[key]
    for node, figures in result['components'].items()
    if nodes is None or node in nodes
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('part', nargs='?', choices=('data', 'workers', 'whole'))
  parser.add_argument('--sizes', help='comma-separated image counts')
  parser.add_argument(
    '--size', type=int, default=10_000, help='images for the workers part'
  )
  parser.add_argument(
    '--work', default=os.path.join(common.PROJECT_ROOT, '.scale_work')
  )
  parser.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = run_child(json.loads(args.child[0]))
    with open(args.child[1], 'w') as f:
      json.dump(result, f)
    return
  if not args.part:
    parser.error('choose a part: data, workers or whole')
  default_sizes = {
    'data': '2500,10000,40000',
    'whole': '5000,20000',
    'workers': str(args.size),
  }[args.part]
  sizes = [int(s) for s in (args.sizes or default_sizes).split(',')]
  images = os.path.join(args.work, 'images')
  common.load_average('start')
  results = {}
  for size in sizes:
    generate(images, size)
    data_root = subset(
      images, os.path.join(args.work, f'data_{args.part}', str(size)), size
    )
    common.metric(f'n{size}_input_bytes', common.tree_bytes(data_root))
    if args.part == 'data':
      results[size] = measure(
        f'n{size}', args.work, data_root, size, nodes=list(_DATA_NODES)
      )
    elif args.part == 'whole':
      results[size] = measure(
        f'whole_n{size}', args.work, data_root, size, trainer=_WHOLE_TRAINER
      )
    else:
      for workers in (1, 2):
        results[workers] = measure(
          f'examplegen_{workers}_workers',
          args.work,
          data_root,
          size,
          nodes=['FileBasedExampleGen'],
          beam=[
            '--direct_running_mode=multi_processing',
            f'--direct_num_workers={workers}',
          ],
        )
    shutil.rmtree(data_root)
  common.load_average('end')
  if not all(results.values()):
    return
  if args.part == 'workers':
    one, two = (
      results[w]['components']['FileBasedExampleGen']['seconds'] for w in (1, 2)
    )
    common.metric('examplegen_throughput_2_over_1_workers', one / two)
    return
  small, large = results[min(sizes)], results[max(sizes)]
  nodes = _DATA_NODES if args.part == 'data' else small['components']
  for node in nodes:
    for key in ('peak_rss_mib', 'peak_pss_mib'):
      if not _peak(small, key, [node]):
        continue  # Over before the first sample (SchemaGen: 0.04 s).
      common.metric(
        f'{node}_{key}_n{max(sizes)}_over_n{min(sizes)}',
        _peak(large, key, [node]) / _peak(small, key, [node]),
      )
  for key in ('peak_rss_mib', 'peak_pss_mib'):
    common.metric(
      f'all_{key}_n{max(sizes)}_over_n{min(sizes)}',
      _peak(large, key, nodes) / _peak(small, key, nodes),
    )


if __name__ == '__main__':
  main()

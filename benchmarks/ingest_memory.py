"""(d) ExampleGen + StatisticsGen + SchemaGen + Transform: memory and bytes.

Builds the real components with pipeline.pipeline.create_pipeline (so they
carry the pipeline's own settings) and runs only those four with
LocalDagRunner (Beam in-memory DirectRunner, the pipeline's defaults) on N
images and on K*N images (the demo tree with K-1 re-encoded, slightly shifted
copies of each image: distinct files of about the same size; --pixels P
resizes them all to P x P first, for larger files). Each size runs in its own
subprocess. Peak memory: the child's ru_maxrss (os.wait4), and the peak of
its process tree's RSS sampled every 50 ms while each component runs
(common.ComponentMonitor). Output bytes: the
Examples artifact's files (GZIP'd TFRecords) and its records uncompressed,
each against the encoded input bytes.

  .venv/bin/python benchmarks/ingest_memory.py [--copies 1] [--factor 4]
      [--pixels 0]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import common

_INGEST = ('FileBasedExampleGen', 'StatisticsGen', 'SchemaGen', 'Transform')


def ingest(data_root: str, output_dir: str) -> dict:
  """Runs the four components once (child process); returns sizes, times."""
  import tensorflow as tf
  from pipeline import settings as settings_lib

  rss_after_imports, _ = common.process_tree_memory_mib()  # No children yet.
  config = settings_lib.PipelineConfig(
    data_root=data_root, output_dir=output_dir
  )
  run = common.run_nodes(config, _INGEST, 'ingest', interval=0.05)
  examples = glob.glob(
    os.path.join(
      config.pipeline_root,
      'FileBasedExampleGen',
      'examples',
      '*',
      'Split-*',
      '*',
    )
  )
  records = tf.data.TFRecordDataset(examples, compression_type='GZIP')
  return {
    'images': sum(1 for _ in records),
    'seconds': run['seconds'],
    'rss_after_imports_mib': rss_after_imports,
    'peak_rss_mib_by_component': {
      node: figures['peak_rss_mib']
      for node, figures in run['components'].items()
    },
    'examples_file_bytes': sum(os.path.getsize(p) for p in examples),
    'examples_record_bytes': sum(len(r.numpy()) for r in records),
    'transform_graph_bytes': common.tree_bytes(
      glob.glob(
        os.path.join(config.pipeline_root, 'Transform', 'transform_graph', '*')
      )[0]
    ),
  }


def measure(data_root: str, work: str) -> dict:
  """Runs `ingest` in a child process; adds its peak RSS."""
  result_path = os.path.join(work, 'result.json')
  child = subprocess.Popen(
    [sys.executable, __file__, '--child', data_root, work]
  )
  _, status, usage = os.wait4(child.pid, 0)
  child.returncode = os.waitstatus_to_exitcode(status)
  if child.returncode:
    raise RuntimeError(f'ingest of {data_root} failed ({child.returncode})')
  with open(result_path) as f:
    result = json.load(f)
  result['peak_rss_mib'] = usage.ru_maxrss / 1024
  result['input_bytes'] = common.tree_bytes(data_root)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--copies',
    type=int,
    default=1,
    help='N = this many versions of each demo image',
  )
  parser.add_argument('--factor', type=int, default=4)
  parser.add_argument(
    '--pixels',
    type=int,
    default=0,
    help='resize the images to this size (larger files)',
  )
  parser.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    data_root, work = args.child
    result = ingest(data_root, os.path.join(work, 'out'))
    with open(os.path.join(work, 'result.json'), 'w') as f:
      json.dump(result, f)
    return

  common.load_average('start')
  sizes = {'n': args.copies, f'{args.factor}n': args.copies * args.factor}
  results = {}
  with tempfile.TemporaryDirectory(prefix='bench_d_') as tmp:
    for name, copies in sizes.items():
      data_root = os.path.join(tmp, name, 'data')
      common.replicate_tree(common.DEMO_DATA, data_root, copies, args.pixels)
      results[name] = measure(data_root, os.path.join(tmp, name))
      print(f'# {name}: {results[name]}', flush=True)
  common.load_average('end')

  for name, result in results.items():
    common.metric(f'{name}_images', result['images'])
    common.metric(f'{name}_input_bytes', result['input_bytes'])
    common.metric(f'{name}_seconds', result['seconds'])
    common.metric(
      f'{name}_rss_after_imports_mib', result['rss_after_imports_mib']
    )
    common.metric(f'{name}_peak_rss_mib', result['peak_rss_mib'])
    for node, peak in result['peak_rss_mib_by_component'].items():
      common.metric(f'{name}_peak_rss_mib_{node}', peak)
    common.metric(f'{name}_examples_file_bytes', result['examples_file_bytes'])
    common.metric(
      f'{name}_examples_record_bytes', result['examples_record_bytes']
    )
    common.metric(
      f'{name}_examples_file_over_input',
      result['examples_file_bytes'] / result['input_bytes'],
    )
    common.metric(
      f'{name}_examples_records_over_input',
      result['examples_record_bytes'] / result['input_bytes'],
    )
    common.metric(
      f'{name}_transform_graph_bytes', result['transform_graph_bytes']
    )
  small, large = results['n'], results[f'{args.factor}n']
  common.metric(
    'peak_rss_ratio_large_over_small',
    large['peak_rss_mib'] / small['peak_rss_mib'],
  )
  common.metric(
    'peak_rss_growth_mib', large['peak_rss_mib'] - small['peak_rss_mib']
  )


if __name__ == '__main__':
  main()

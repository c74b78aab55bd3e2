"""Rebuilds data/fashion_demo/ from Debian's `dataset-fashion-mnist` package.

Writes a class-balanced subset of the Fashion-MNIST test set as one folder per
class (the `image_dataset_from_directory` layout), alternating PNG and JPEG so
that both decoders are exercised in training and serving.

    apt-get install dataset-fashion-mnist
    python data/build_fashion_demo.py
"""

import argparse
import gzip
import os

import numpy as np
from PIL import Image

SOURCE = '/usr/share/datasets/fashion-mnist'
CLASSES = {0: 't_shirt', 1: 'trouser', 2: 'pullover', 7: 'sneaker', 8: 'bag'}


def _read_idx(path, offset):
  with gzip.open(path, 'rb') as f:
    return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--per-class', type=int, default=64)
  parser.add_argument(
    '--out',
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'fashion_demo'
    ),
  )
  args = parser.parse_args()
  images = _read_idx(f'{SOURCE}/t10k-images-idx3-ubyte.gz', 16).reshape(
    -1, 28, 28
  )
  labels = _read_idx(f'{SOURCE}/t10k-labels-idx1-ubyte.gz', 8)
  for label, name in CLASSES.items():
    os.makedirs(os.path.join(args.out, name), exist_ok=True)
    indices = np.flatnonzero(labels == label)[: args.per_class]
    for n, i in enumerate(indices):
      ext = 'png' if n % 2 == 0 else 'jpg'
      Image.fromarray(images[i], mode='L').save(
        os.path.join(args.out, name, f'{name}_{i:05d}.{ext}'), quality=95
      )
  print(f'wrote {len(CLASSES) * args.per_class} images to {args.out}')


if __name__ == '__main__':
  main()

"""Writes data/fashion_text/manifest.csv: the fashion_demo images + a text.

An image+text demo built from bundled data. Each of the 320 images of
data/fashion_demo/ gets one short product description, drawn with a fixed
seed from phrase pools written for this demo (they are not real product
listings). The text is related to the image but deliberately weaker: about a
third of the descriptions name the product type, a third only its group
(tops: t_shirt or pullover; clothing; footwear and bags), and a third say
nothing about it. So text alone cannot separate the classes and the images
alone miss some, which is what a fusion model is for.

    python data/build_fashion_text.py
"""

import argparse
import csv
import os
import random

_DATA = os.path.dirname(os.path.abspath(__file__))
# Phrases that name the product type.
_SPECIFIC = {
  't_shirt': [
    'short-sleeved crew-neck tee',
    'basic cotton t-shirt',
    'graphic print tee',
    'v-neck jersey t-shirt',
    'sleeveless summer top',
  ],
  'trouser': [
    'straight-leg trousers',
    'slim-fit chinos',
    'wide-leg pants with a high waist',
    'five-pocket jeans',
    'tailored suit trousers',
  ],
  'pullover': [
    'knitted wool jumper',
    'long-sleeved crew-neck sweater',
    'chunky cable-knit pullover',
    'fleece sweatshirt',
    'ribbed turtleneck sweater',
  ],
  'sneaker': [
    'low-top canvas sneakers',
    'lace-up running shoes',
    'lightweight trainers with a rubber sole',
    'slip-on sneakers',
    'mesh sports shoes',
  ],
  'bag': [
    'leather shoulder bag',
    'canvas tote bag',
    'small crossbody purse',
    'backpack with zip pockets',
    'clutch with a chain strap',
  ],
}
# Phrases shared by a group of classes.
_GROUPS = [
  (
    ('t_shirt', 'pullover'),
    [
      'comfortable top for layering',
      'soft fabric with a relaxed fit',
      'a top that goes with jeans or a skirt',
    ],
  ),
  (
    ('t_shirt', 'trouser', 'pullover'),
    [
      'machine washable, true to size',
      'cotton blend for everyday wear',
      'clothing basics for the office',
    ],
  ),
  (
    ('sneaker', 'bag'),
    [
      'vegan leather, water resistant',
      'accessories for the weekend',
      'durable stitching, made to last',
    ],
  ),
]
# Phrases that fit any product.
_GENERIC = [
  'bestseller, back in stock',
  'available in black, grey and white',
  'a wardrobe essential',
  'free returns within 30 days',
  'new season collection',
]


def describe(label: str, rng: random.Random) -> str:
  """One description of an item of class `label`."""
  kind = rng.choice(('specific', 'group', 'generic'))
  if kind == 'specific':
    phrase = rng.choice(_SPECIFIC[label])
  elif kind == 'group':
    pools = [phrases for classes, phrases in _GROUPS if label in classes]
    phrase = rng.choice(rng.choice(pools))
  else:
    phrase = rng.choice(_GENERIC)
  return phrase[0].upper() + phrase[1:] + '.'


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--images', default=os.path.join(_DATA, 'fashion_demo'))
  parser.add_argument(
    '--out', default=os.path.join(_DATA, 'fashion_text', 'manifest.csv')
  )
  args = parser.parse_args()
  rng = random.Random(0)
  rows = []
  for label in sorted(os.listdir(args.images)):
    for name in sorted(os.listdir(os.path.join(args.images, label))):
      path = os.path.relpath(os.path.join(args.images, label, name), _DATA)
      rows.append((path.replace(os.sep, '/'), describe(label, rng), label))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(('path', 'text', 'label'))
    writer.writerows(rows)
  print(f'wrote {len(rows)} rows to {args.out}')


if __name__ == '__main__':
  main()

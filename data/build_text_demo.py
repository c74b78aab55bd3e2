"""Rebuilds data/movie_sentiment/ from the vaderSentiment 3.3.2 source package.

The sdist of `vaderSentiment==3.3.2` (MIT, C.J. Hutto) ships the ICWSM 2014
ground-truth sets. Its movie review snippets are 10,605 sentences from
rotten.tomatoes.com reviews (Pang & Lee, 2004), each with the mean sentiment
rating of 20 human raters in [-4, 4]. This script keeps clear cases (rating
>= 1 is `positive`, <= -1 is `negative`) of at most 40 words, samples a
balanced subset with a fixed seed, and writes it as CSV and as JSON Lines
(same rows): columns id (the snippet id), text, label, rating.

    pip download --no-deps --no-binary :all: vadersentiment==3.3.2
    python data/build_text_demo.py --sdist vaderSentiment-3.3.2.tar.gz
"""

import argparse
import csv
import io
import json
import os
import random
import tarfile

_MEMBER = 'vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz'
_SNIPPETS = 'hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt'


def _snippets(sdist):
  """(id, rating, text) rows of the movie snippets inside the sdist."""
  with tarfile.open(sdist) as outer:
    inner = io.BytesIO(outer.extractfile(_MEMBER).read())
  with tarfile.open(fileobj=inner) as resources:
    text = resources.extractfile(_SNIPPETS).read().decode('utf-8')
  rows = []
  for line in text.splitlines():
    snippet_id, rating, snippet = line.split('\t', 2)
    rows.append((snippet_id, float(rating), snippet.strip()))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument(
    '--sdist', required=True, help='vaderSentiment-3.3.2.tar.gz (pip download)'
  )
  parser.add_argument('--per-class', type=int, default=250)
  parser.add_argument('--max-words', type=int, default=40)
  parser.add_argument(
    '--out',
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'movie_sentiment'
    ),
  )
  args = parser.parse_args()
  rng = random.Random(0)
  rows = []
  for label, keep in (
    ('positive', lambda r: r >= 1.0),
    ('negative', lambda r: r <= -1.0),
  ):
    candidates = [
      (i, r, t)
      for i, r, t in _snippets(args.sdist)
      if keep(r) and len(t.split()) <= args.max_words
    ]
    rows += [
      (i, t, label, r) for i, r, t in rng.sample(candidates, args.per_class)
    ]
  rng.shuffle(rows)
  os.makedirs(args.out, exist_ok=True)
  columns = ('id', 'text', 'label', 'rating')
  with open(
    os.path.join(args.out, 'reviews.csv'), 'w', newline='', encoding='utf-8'
  ) as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(columns)
    writer.writerows(rows)
  with open(
    os.path.join(args.out, 'reviews.jsonl'), 'w', encoding='utf-8'
  ) as f:
    for row in rows:
      f.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False) + '\n')
  print(f'wrote {len(rows)} rows to {args.out}/reviews.csv and .jsonl')


if __name__ == '__main__':
  main()

"""The closed-form start against the linear probe over many random splits.

One eval split of about 120 examples decides `unseen_datasets.py`'s
comparison by a single example. This pools the train and eval embeddings
of a finished `unseen_datasets.py` run (--work, same datasets) and, on each
of --repeats stratified 80/20 splits, scores on the 20%:

  start   the Trainer's closed-form start as exported when phase 1 keeps it:
          the L2 by linear_probe.fit_by_cross_validation (20% of the train
          part as its validation part, random), refitted on the whole train
          part (modules/embedding_cache.py)
  probe   scikit-learn's LogisticRegression() (C=1) on the whole train part

It prints both mean accuracies, their mean difference with its standard
error, and how often the start wins, ties or loses.
"""

import argparse
import os

import common
import numpy as np
from sklearn import linear_model
from sklearn import model_selection

from modules import linear_probe
import unseen_datasets


def compare(x, y, repeats):
  num_classes = int(y.max()) + 1
  splits = model_selection.StratifiedShuffleSplit(
    repeats, test_size=0.2, random_state=common.SEED
  )
  correct = {'start': [], 'probe': []}
  chosen = []
  for i, (train, test) in enumerate(splits.split(x, y)):
    held_out = np.random.default_rng(i).random(len(train)) < 0.2
    fit_part, validation = train[~held_out], train[held_out]
    start = linear_probe.fit_by_cross_validation(
      (x[fit_part], y[fit_part]), (x[validation], y[validation]), num_classes
    )
    kernel, bias = linear_probe.fit(
      x[train],
      y[train],
      num_classes,
      start['weight_decay'],
      initial=(start['kernel'], start['bias']),
    )
    predicted = np.argmax(x[test] @ kernel + bias, axis=1)
    correct['start'].append(int(np.sum(predicted == y[test])))
    probe = linear_model.LogisticRegression(max_iter=5000).fit(
      x[train], y[train]
    )
    correct['probe'].append(int(np.sum(probe.predict(x[test]) == y[test])))
    chosen.append(start['weight_decay'])
    print(
      f'split {i}: L2 {chosen[-1]:g}, correct {correct["start"][-1]} vs '
      f'{correct["probe"][-1]} of {len(test)}',
      flush=True,
    )
  start, probe = (np.array(correct[k]) for k in ('start', 'probe'))
  difference = (start - probe) / len(test)
  return {
    'eval_examples': len(test),
    'start': start.mean() / len(test),
    'probe': probe.mean() / len(test),
    'difference': difference.mean(),
    'standard_error': difference.std(ddof=1) / np.sqrt(repeats),
    'wins_ties_losses': (
      int(np.sum(start > probe)),
      int(np.sum(start == probe)),
      int(np.sum(start < probe)),
    ),
    'chosen_l2': {f'{d:g}': chosen.count(d) for d in sorted(set(chosen))},
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--work', default='/tmp/unseen_datasets')
  parser.add_argument('--datasets', default=','.join(unseen_datasets.DATASETS))
  parser.add_argument('--repeats', type=int, default=100)
  args = parser.parse_args()
  common.load_average('start')
  for name in args.datasets.split(','):
    pipeline_root = os.path.join(args.work, 'runs', name, 'pipeline_root')
    data = unseen_datasets.embeddings(pipeline_root)
    x, y = (np.concatenate(parts) for parts in zip(data['train'], data['eval']))
    result = compare(x, y, args.repeats)
    for key, value in result.items():
      common.metric(f'{name}_{key}', value)
  common.load_average('end')


if __name__ == '__main__':
  main()

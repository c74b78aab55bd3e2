"""PipelineConfig.modality picks the ExampleGen and the Transform settings.

The image modality's settings are unchanged by the others.
"""

import pytest
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from components import image_example_gen
from components import text_example_gen
from modules import features
from pipeline import settings as settings_lib
from pipeline import pipeline as pipeline_lib


def _config(**settings):
  return settings_lib.PipelineConfig(data_root='/data', **settings)


def _partition_feature(example_gen) -> str:
  output = proto_utils.json_to_proto(
    example_gen.exec_properties['output_config'], example_gen_pb2.Output()
  )
  return output.split_config.partition_feature_name


def test_image_is_unchanged():
  config = _config()
  assert pipeline_lib.transform_config(config) == {'image_size': 96}
  example_gen = pipeline_lib.example_gen_component(config, config.data_root)
  assert (
    example_gen.executor_spec.executor_class
    is image_example_gen.ImageExampleGenExecutor
  )


def test_text_and_image_text():
  text = _config(
    modality='text',
    manifest='reviews.jsonl',
    text_columns=['title', 'body'],
    label_column='stars',
    id_column='review_id',
    trainer={'max_length': 32},
  )
  assert pipeline_lib.transform_config(text) == {
    'text_encoder': 'MiniLM',
    'max_length': 32,
  }
  example_gen = pipeline_lib.example_gen_component(text, text.data_root)
  assert (
    example_gen.executor_spec.executor_class
    is text_example_gen.TextExampleGenExecutor
  )
  options = text_example_gen.parse_custom_config(
    example_gen.exec_properties['custom_config']
  )
  assert options == text_example_gen.Options(
    text_columns=('title', 'body'),
    label_column='stars',
    id_column='review_id',
    require_every_split=True,
  )
  assert _partition_feature(example_gen) == 'text'

  both = _config(
    modality='image_text', manifest='manifest.csv', image_column='image'
  )
  assert pipeline_lib.transform_config(both) == {
    'image_size': 96,
    'text_encoder': 'MiniLM',
    'max_length': 64,
  }
  example_gen = pipeline_lib.example_gen_component(both, both.data_root)
  options = text_example_gen.parse_custom_config(
    example_gen.exec_properties['custom_config']
  )
  assert options.image_column == 'image'
  assert _partition_feature(example_gen) == 'path'
  pipeline = pipeline_lib.create_pipeline(both)
  transform = next(c for c in pipeline.components if c.id == 'Transform')
  assert 'max_length' in transform.exec_properties['custom_config']


@pytest.mark.parametrize(
  'settings,message',
  [
    ({'modality': 'text'}, "modality 'text' needs manifest"),
    ({'modality': 'text', 'manifest': 'a.tsv'}, 'a CSV or JSONL data file'),
    (
      {
        'modality': 'image_text',
        'manifest': 'a.csv',
        'split_folders': ['train', 'eval'],
      },
      'split_folders is for images',
    ),
    ({'modality': 'audio'}, "modality 'audio' is not supported"),
  ],
)
def test_bad_settings(settings, message):
  with pytest.raises(ValueError, match=message):
    _config(**settings)


def test_modality_of_features():
  assert features.modality_of(['image', 'label', 'path']) == features.IMAGE
  assert features.modality_of(['text', 'label', 'id']) == features.TEXT
  assert features.modality_of(['image_xf', 'token_ids_xf']) == (
    features.IMAGE_TEXT
  )
  with pytest.raises(ValueError, match='No image or text feature'):
    features.modality_of(['label'])

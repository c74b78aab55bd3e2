"""The command of every compiled component: TFX's V2 entrypoint, fixed for KFP.

  python -m kubeflow.entrypoint --executor_class_path ... \\
      --json_serialized_invocation_args {{$}} \\
      --json_serialized_inputs_spec_args {...} [beam args]

KFP's driver hands a task each upstream artifact with an empty type,
`type: {instanceSchema: ""}`, on every 2.x release so far
(kubeflow/pipelines `backend/src/v2/metadata/client.go`:
`GetOutputArtifactsByExecutionId` sets `Schema: "" // TODO(Bobgy): figure
out how to get schema`, which `OutputArtifact.ToRuntimeArtifact` writes into
the type). TFX 1.16's entrypoint takes the artifact's class from that schema
(`kubeflow_v2_entrypoint_utils._parse_raw_artifact`) and fails: with
`instanceSchema: ""`, `AttributeError: 'NoneType' object has no attribute
'get'`; with no type, `UnboundLocalError` (tensorflow/tfx#7768).

The compiled container also gets the component's inputs spec (schema 2.1),
which declares each input artifact's type. This module puts that type back
wherever the driver left it empty, then runs TFX's
`kubeflow_v2_run_executor`. Unlike TFX's own `__main__`, it gives TFX's flag
parser the arguments without the program path, which TFX would otherwise
count as a Beam argument: a non-empty Beam argument list makes every Beam
component build an sdist of TFX for remote workers
(`dependency_utils.make_beam_dependency_flags`), needless for the
DirectRunner in the pod.
"""

import json
import sys
from typing import Any, Dict, List

INVOCATION_FLAG = '--json_serialized_invocation_args'
INPUTS_SPEC_FLAG = '--json_serialized_inputs_spec_args'


def restore_input_types(
  executor_input: Dict[str, Any], inputs_spec: Dict[str, Any]
) -> Dict[str, Any]:
  """`executor_input` (JSON) with each untyped input artifact's declared type.

  Raises:
    ValueError: An input artifact has no type and the spec declares none.
  """
  declared = inputs_spec.get('artifacts', {})
  for key, artifact_list in (
    executor_input.get('inputs', {}).get('artifacts', {}).items()
  ):
    for artifact in artifact_list.get('artifacts', []):
      kind = artifact.get('type') or {}
      if kind.get('instanceSchema') or kind.get('schemaTitle'):
        continue
      if 'artifactType' not in declared.get(key, {}):
        raise ValueError(
          f'Input artifact {key!r} came without a type and the component '
          'declares none: compile the pipeline with schema 2.1.'
        )
      artifact['type'] = dict(declared[key]['artifactType'])
  return executor_input


def fix_argv(argv: List[str]) -> List[str]:
  """The command line with the invocation's input types restored."""
  argv = list(argv)
  values = {}
  for flag in (INVOCATION_FLAG, INPUTS_SPEC_FLAG):
    for i, word in enumerate(argv):
      if word == flag and i + 1 < len(argv):
        values[flag] = i + 1
      elif word.startswith(flag + '='):
        values[flag] = i
  if INVOCATION_FLAG not in values or INPUTS_SPEC_FLAG not in values:
    return argv

  def value(flag):
    word = argv[values[flag]]
    return word.split('=', 1)[1] if word.startswith(flag + '=') else word

  fixed = json.dumps(
    restore_input_types(
      json.loads(value(INVOCATION_FLAG)), json.loads(value(INPUTS_SPEC_FLAG))
    )
  )
  index = values[INVOCATION_FLAG]
  argv[index] = (
    f'{INVOCATION_FLAG}={fixed}'
    if argv[index].startswith(INVOCATION_FLAG + '=')
    else fixed
  )
  return argv


def main() -> None:
  # Imported here: TFX and TensorFlow load in the pod only.
  from absl import app
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

  sys.argv = fix_argv(sys.argv)
  app.run(
    kubeflow_v2_run_executor.main,
    flags_parser=lambda argv: parse_flags(argv[1:]),
  )


def parse_flags(args: List[str]):
  """TFX's V2 entrypoint flags and the Beam arguments, from `args`."""
  from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

  return kubeflow_v2_run_executor._parse_flags(args)


if __name__ == '__main__':
  main()

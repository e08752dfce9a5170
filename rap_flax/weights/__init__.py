"""Weights in and out: one loader for every source, and the upstream (PyTorch) key mapping.

    variables = rap_flax.load_variables(source, model, checkpoint="best")
    model, variables = rap_flax.load_model(workdir)   # sources that record their model

- `keys`: Flax variable paths <-> upstream state-dict keys and layouts;
- `template`: a model's variable shapes, the template every source is read against;
- `formats`: the files weights live in (.pth/.pt, .safetensors, converter directories,
  training workdirs), read and written;
- `workdir`: a training workdir's checkpoints, shared with `rap_flax.training`;
- `loading`: exact loading (`load_variables`) and lenient matching for fine-tuning.

Nothing here imports torch (only reading or writing a .pth file does) or rap_flax.training.
"""

from rap_flax.weights.formats import (MODEL_METADATA_FILE, Source, open_source, read_state_dict,
                                      save_flax_directory, save_state_dict)
from rap_flax.weights.keys import (COLLECTIONS, flatten, to_state_dict, torch_key,
                                   unflatten)
from rap_flax.weights.loading import (CheckpointMismatchError, Matched, exact_variables,
                                      load_model, load_variables, match_variables)
from rap_flax.weights.template import template_image_size, variable_shapes
from rap_flax.weights.workdir import is_workdir

__all__ = ["COLLECTIONS", "CheckpointMismatchError", "MODEL_METADATA_FILE", "Matched", "Source",
           "exact_variables", "flatten", "is_workdir", "load_model", "load_variables",
           "match_variables", "open_source", "read_state_dict", "save_flax_directory",
           "save_state_dict", "template_image_size", "to_state_dict", "torch_key", "unflatten",
           "variable_shapes"]

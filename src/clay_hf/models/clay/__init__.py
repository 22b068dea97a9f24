"""Clay v0 as a transformers model: configuration, modeling, task heads, masking, loss, recompute, image processing and
pipelines.

The self-contained unit uploaded to the Hub as remote code: its modules import only torch, transformers, numpy-level
libraries and each other (relative imports), so publishing copies the folder. `convert_clay_original_checkpoint`
(original Lightning checkpoints → this model) is not shipped."""

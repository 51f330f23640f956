"""detx.engine: everything detectron2 on the training side: config keys, dataset registration, mapper, hooks,
trainer, the weights-file checks."""

"""detx.engine: everything detectron2 on the training side: config keys, dataset registration, mapper, hooks,
trainer, the weights-file checks, and the image classifier model (registered in detectron2's registries on import).
"""

from detx.engine import classifier as _classifier  # noqa: F401  (registers DetxClassifier and the DenseNets)

"""detx.workflows: each whole step a user runs (prepare, predict, evaluate, fit the classifier, the demo), built
from the stage packages; the scripts in ``tools/`` and ``datasets/`` only parse arguments and call these."""

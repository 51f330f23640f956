"""``python -m detx.synthetic``: the generator's command line (see :func:`detx.synthetic.generator.main`)."""

import sys

from detx.synthetic.generator import main

sys.exit(main())

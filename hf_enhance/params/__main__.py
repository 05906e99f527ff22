"""``python -m hf_enhance.params llama-2-70b --preset all-linear -r 16``."""

import sys

from hf_enhance.params.cli import main

sys.exit(main())

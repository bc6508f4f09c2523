"""`python -m rgd_eval ...` (what torchrun starts: `torchrun --nproc-per-node N -m rgd_eval run ...`)."""
import sys

from .cli import main

sys.exit(main())

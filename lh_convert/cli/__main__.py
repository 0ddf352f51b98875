"""``python -m lh_convert.cli`` (and ``torchrun -m lh_convert.cli -- ...``)."""

from . import main

main()

"""``python -m qwen_instruct_det COMMAND ...`` is ``qid COMMAND ...`` (e.g. under ``accelerate launch -m qwen_instruct_det train``)."""

import sys

from .commands.cli import main

sys.exit(main())

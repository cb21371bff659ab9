"""``python -m a2llm_ros`` is the ``a2llm`` command."""
import sys

from a2llm_ros.tools.cli import main

sys.exit(main())

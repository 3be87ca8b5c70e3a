"""``python tools/dataset_tool.py ...`` = ``progan-dataset ...`` (see progan/dataset/cli.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from progan.dataset.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

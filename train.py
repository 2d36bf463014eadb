"""Train a bird-sound classifier: `python train.py --strategy mirrored` (see `--help`)."""
import sys

from tfbird.cli import main

sys.exit(main(["train", *sys.argv[1:]]))

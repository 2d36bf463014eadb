"""Train a bird-sound classifier: `python train.py --strategy mirrored` (see `--help`)."""
import sys

from tfbird.cli import main

if __name__ == "__main__":  # Guarded: ingest starts decode worker processes (spawn).
    sys.exit(main(["train", *sys.argv[1:]]))

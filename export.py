"""Export the newest run to a SavedModel (and TFLite): `python export.py --tflite`."""
import sys

from tfbird.cli import main

if __name__ == "__main__":  # Guarded: ingest starts decode worker processes (spawn).
    sys.exit(main(["export", *sys.argv[1:]]))

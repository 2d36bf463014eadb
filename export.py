"""Export the newest run to a SavedModel (and TFLite): `python export.py --tflite`."""
import sys

from tfbird.cli import main

sys.exit(main(["export", *sys.argv[1:]]))

"""TF Serving REST client: recording -> windows -> ``POST .../<name>:predict`` -> detections.

The recording is streamed and cut into the model's windows exactly as ``tfbird analyze`` does;
each batch of windows is one JSON request ``{"signature_name": "serving_default",
"instances": [[...samples...], ...]}`` sent with urllib; the ``predictions`` are turned into
detection rows (``file,start_s,end_s,label,confidence``) printed as CSV.

The labels, sample rate and window length come from the export's ``assets/`` folder
(``--assets``). The SavedModel's ``labels`` signature has no input, and TF Serving's REST API
refuses signatures without inputs ("Failed to get input map for signature"), so the REST
client reads ``assets/labels.txt`` instead; gRPC clients can call ``labels``.

Example:
    python -m tfbird.serving_client --url http://localhost:8501/v1/models/tfbird:predict \\
        --assets exports/tfbird/1/assets --min-conf 0.5 recording.flac
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from tfbird import analyze as analyze_lib
from tfbird import detections as detections_lib
from tfbird.artifacts import OUTPUT_NAME
from tfbird.config import AnalyzeConfig


def build_request(url: str, windows: np.ndarray, signature_name: str = "serving_default"
                  ) -> urllib.request.Request:
    """The REST predict request for a batch of windows ``[n, window_samples]`` (row format)."""
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 2:
        raise ValueError(f"windows must be [n, window_samples]. Received: shape={windows.shape}")
    body = {"signature_name": signature_name, "instances": windows.tolist()}
    return urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                  headers={"Content-Type": "application/json"})


def parse_response(payload: bytes, num_windows: int, num_classes: int) -> np.ndarray:
    """``predictions`` of a REST response as float32 ``[num_windows, num_classes]``.

    A model with several outputs (the ``sed`` head adds ``framewise``) answers one object
    per window; its ``probabilities`` are taken.
    """
    answer = json.loads(payload)
    if "predictions" not in answer:
        raise ValueError(f"TF Serving answered without predictions. Received: {str(answer)[:300]}")
    predictions = answer["predictions"]
    if predictions and isinstance(predictions[0], dict):
        predictions = [row[OUTPUT_NAME] for row in predictions]
    predictions = np.asarray(predictions, np.float32)
    if predictions.shape != (num_windows, num_classes):
        raise ValueError(f"Expected predictions of shape {(num_windows, num_classes)}. "
                         f"Received: shape={predictions.shape}")
    return predictions


def predict(url: str, windows: np.ndarray, num_classes: int, timeout_s: float = 60.0) -> np.ndarray:
    with urllib.request.urlopen(build_request(url, windows), timeout=timeout_s) as response:
        return parse_response(response.read(), len(windows), num_classes)


def detect_file(path: str | Path, url: str, info: analyze_lib.ModelInfo, cfg: AnalyzeConfig,
                timeout_s: float = 60.0) -> pd.DataFrame:
    """Streams one recording through the served model; returns its detection rows."""
    scored = analyze_lib.score_recording(
        path, lambda windows: {OUTPUT_NAME: predict(
            url, windows, len(info.labels), timeout_s)}, info, cfg)
    return analyze_lib.detect(scored, info, cfg, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfbird.serving_client",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help="recordings")
    parser.add_argument("--url", required=True,
                        help="predict URL, e.g. http://localhost:8501/v1/models/tfbird:predict")
    parser.add_argument("--assets", required=True,
                        help="the export's assets folder (labels.txt, model_config.json)")
    parser.add_argument("--overlap", type=float, default=0.0, help="window overlap (s)")
    parser.add_argument("--min-conf", type=float, default=0.1, help="smallest probability")
    parser.add_argument("--top-n", type=int, default=None, help="labels per window")
    parser.add_argument("--merge-consecutive", action="store_true",
                        help="one row per call spanning windows")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per request")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request (s)")
    args = parser.parse_args(argv)
    try:
        cfg = AnalyzeConfig(overlap_s=args.overlap, min_conf=args.min_conf, top_n=args.top_n,
                            merge_consecutive=args.merge_consecutive,
                            batch_size=args.batch_size).validate()
        info = analyze_lib.info_from_assets(Path(args.assets).parent, "rest", Path(args.assets))
        rows = [detect_file(path, args.url, info, cfg, args.timeout) for path in args.files]
    except (ValueError, OSError) as error:  # OSError: the server is unreachable.
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = pd.concat(rows, ignore_index=True) if rows else detections_lib.empty_detections()
    sys.stdout.write(table.to_csv(index=False, float_format="%.4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

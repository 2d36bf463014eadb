"""The class list: ``labels.txt`` (one label per line, index = line number) and multi-hot targets.

Example:
    >>> to_multi_hot(["sp01", "sp00"], ["sp00", "sp01", "sp02"])
    array([1., 1., 0.], dtype=float32)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_labels(path: str | Path) -> list[str]:
    """Reads ``labels.txt``; blank lines are not labels."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Label file not found. Received: labels={str(path)!r}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def write_labels(labels: list[str], path: str | Path) -> None:
    Path(path).write_text("".join(f"{label}\n" for label in labels))


def to_multi_hot(names: list[str], labels: list[str]) -> np.ndarray:
    """float32 ``[len(labels)]`` with 1 at each of ``names``.

    Raises:
        ValueError: a name that is not in ``labels``.
    """
    index = {label: i for i, label in enumerate(labels)}
    target = np.zeros(len(labels), np.float32)
    for name in names:
        if name not in index:
            raise ValueError(f"Unknown label. Received: label={name!r}")
        target[index[name]] = 1.0
    return target

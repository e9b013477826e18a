"""Small helpers that the studies share to write what they measured: CSV rows, JSON, figures,
mean ± std."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os

import numpy as np


def study_parser(doc: str, *, seeds: int, out: str, quick: str) -> argparse.ArgumentParser:
    """The command line every study shares: --seeds, --quick (a smoke run), --resume (keep what
    the output folder holds) and --out."""

    def seed_count(text):
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
        return value

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=seed_count, default=seeds)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--out", default=out)
    return parser


def write_csv(path: str, rows: list[dict]) -> str:
    """`rows` (dicts; the columns are every key, in first-seen order) as a CSV file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str) -> list[dict]:
    """A CSV file written by `write_csv`, numbers and booleans parsed back."""

    def parse(text):
        if text in ("True", "False"):
            return text == "True"
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text and "e" not in text else number

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_json(path: str, obj) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_plain)
    return path


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def figure(width: float, height: float):
    """A matplotlib figure of `width` × `height` inches at 100 dpi, made without pyplot: nothing
    is shown, the user's backend is left alone and nothing needs closing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def save_figure(fig, path: str) -> str:
    """Lay out a figure of `figure` and write it as `path` (its folder created)."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    values = np.asarray(list(values), np.float64)
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

"""Results laid out like the paper's tables: one row per method or run, one column per metric,
each header carrying its direction (↑ higher is better, ↓ lower is better). The best value of a
column is bold in Markdown when there is more than one row, as in the paper.

CSV files written here read back with `ResultsTable.read_csv`, so repeated `facex evaluate` runs
can add their rows to one table.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union


@dataclass(frozen=True)
class MetricColumn:
    label: str
    higher_is_better: bool
    decimals: int
    doc: str

    @property
    def header(self) -> str:
        return self.label + ("↑" if self.higher_is_better else "↓")


# Paper order (Sec. 4). Keys are what metrics are called everywhere else (CLI --metrics, CSV reading).
METRIC_COLUMNS: dict[str, MetricColumn] = {
    "id": MetricColumn("ID", True, 4, "cosine similarity of identity embeddings, generated vs reference"),
    "pose": MetricColumn("Pose", False, 4, "L2 error of head pose (radians), generated vs driving"),
    "expression": MetricColumn("Exp", False, 4, "L2 error of expression coefficients, generated vs driving"),
    "gaze": MetricColumn("Gaze", False, 4, "L2 error of gaze (radians), generated vs driving"),
    "ssim": MetricColumn("SSIM", True, 4, "structural similarity, generated vs reference"),
    "psnr": MetricColumn("PSNR", True, 2, "peak signal-to-noise ratio in dB, generated vs reference"),
    "rmse": MetricColumn("RMSE", False, 4, "root mean squared error in [0, 1] units, generated vs reference"),
    "fid": MetricColumn("FID", False, 2, "Fréchet Inception distance, generated set vs reference set"),
}

NAME_HEADER = "Method"


class TableError(ValueError):
    """A results table that cannot be built or read."""


def _header_to_key() -> dict[str, str]:
    out = {}
    for key, col in METRIC_COLUMNS.items():
        for alias in (key, col.label, col.header):
            out[alias.lower()] = key
    return out


@dataclass
class ResultsTable:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # run name -> metric key -> value

    def add(self, name: str, values: dict[str, float]) -> None:
        """Add or replace the row `name`."""
        unknown = set(values) - set(METRIC_COLUMNS)
        if unknown:
            raise TableError(f"unknown metric(s) {sorted(unknown)}; known: {', '.join(METRIC_COLUMNS)}")
        self.rows[name] = {k: float(v) for k, v in values.items() if v is not None}

    def columns(self) -> list[str]:
        """Metric keys present in any row, in the paper's order."""
        present = {k for row in self.rows.values() for k in row}
        return [k for k in METRIC_COLUMNS if k in present]

    def best(self, key: str) -> Optional[float]:
        values = [row[key] for row in self.rows.values() if key in row and not math.isnan(row[key])]
        if not values:
            return None
        return max(values) if METRIC_COLUMNS[key].higher_is_better else min(values)

    @staticmethod
    def format_value(key: str, value: Optional[float]) -> str:
        if value is None:
            return ""
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{METRIC_COLUMNS[key].decimals}f}"

    # ---- Markdown --------------------------------------------------------------------------------
    def to_markdown(self, bold_best: bool = True) -> str:
        cols = self.columns()
        headers = [NAME_HEADER] + [METRIC_COLUMNS[k].header for k in cols]
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(cols)) + "|"]
        mark = bold_best and len(self.rows) > 1
        bests = {k: self.best(k) for k in cols}
        for name, row in self.rows.items():
            cells = [name.replace("|", "\\|")]
            for k in cols:
                text = self.format_value(k, row.get(k)) or "–"
                # Compare the printed values, so a tie at the shown precision is bold in both rows.
                if mark and k in row and bests[k] is not None and text == self.format_value(k, bests[k]):
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    # ---- CSV -----------------------------------------------------------------------------------
    def to_csv(self) -> str:
        """Full-precision values (repr), headers with arrows, empty cells for metrics not measured."""
        cols = self.columns()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([NAME_HEADER] + [METRIC_COLUMNS[k].header for k in cols])
        for name, row in self.rows.items():
            writer.writerow([name] + [repr(row[k]) if k in row else "" for k in cols])
        return buf.getvalue()

    def write_markdown(self, path: Union[str, Path], bold_best: bool = True) -> Path:
        return _write_text(path, self.to_markdown(bold_best))

    def write_csv(self, path: Union[str, Path]) -> Path:
        return _write_text(path, self.to_csv())

    @classmethod
    def read_csv(cls, path: Union[str, Path]) -> "ResultsTable":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise TableError(f"cannot read results table {path}: {e}") from e
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if not header or header[0] != NAME_HEADER:
            raise TableError(f"{path} is not a FaceX results table (first column must be {NAME_HEADER!r})")
        lookup = _header_to_key()
        keys = []
        for h in header[1:]:
            if h.strip().lower() not in lookup:
                raise TableError(f"{path}: unknown column {h!r}; known: {', '.join(c.header for c in METRIC_COLUMNS.values())}")
            keys.append(lookup[h.strip().lower()])
        table = cls()
        for line_no, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise TableError(f"{path}, line {line_no}: {len(cells)} cells, the header has {len(header)}")
            try:
                values = {k: float(c) for k, c in zip(keys, cells[1:]) if c.strip()}
            except ValueError as e:
                raise TableError(f"{path}, line {line_no}: {e}") from e
            table.add(cells[0], values)
        return table


def _write_text(path: Union[str, Path], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

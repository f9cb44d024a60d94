"""The reproduction table: one row per entry (the study's protocol and number, audioml under
that protocol and under its grouped one with the 95 % interval and the majority baseline, wall
time), written as ``reproduction.csv`` (every field) and ``reproduction.md`` (the readable
columns, skip and failure reasons as numbered notes under the table)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audioml.reproduce.jobs import JobResult
from audioml.reproduce.registry import Entry

__all__ = ["Row", "CSV_COLUMNS", "write_csv", "markdown_table", "write_markdown", "format_seconds"]

#: Columns of reproduction.csv, in order.
CSV_COLUMNS = ("study", "system", "experiment", "runner", "metric", "study_protocol", "reported_value", "reported",
               "same_protocol_status", "same_protocol_value", "same_protocol_ci_low", "same_protocol_ci_high",
               "same_protocol_baseline", "same_protocol_seconds", "grouped_protocol", "grouped_status",
               "grouped_value", "grouped_ci_low", "grouped_ci_high", "grouped_baseline", "grouped_seconds",
               "seconds", "notes", "same_protocol_run_dir", "grouped_run_dir")


@dataclass(frozen=True)
class Row:
    """An entry with its two job results (``same``: under the study's protocol)."""

    entry: Entry
    same: JobResult
    grouped: JobResult

    @property
    def seconds(self) -> float:
        shared = self.entry.study_protocol.same_as is not None  # one run shown in both columns
        return self.grouped.seconds + (0.0 if shared else self.same.seconds)

    def numbers(self, result: JobResult) -> dict[str, float | None]:
        metric = self.entry.reported.metric
        return {"value": result.value(metric), "ci_low": result.value(f"{metric}_ci_low"),
                "ci_high": result.value(f"{metric}_ci_high"), "baseline": result.value(self.entry.reported.baseline_key)}

    def notes(self) -> list[tuple[str, str]]:
        """``(column, text)``: why a job gave no number (``column``: ``same`` or ``grouped``),
        and the remark of a study protocol that is the grouped one (one run fills both)."""
        notes: list[tuple[str, str]] = []
        if self.entry.study_protocol.same_as is not None:
            notes.append(("same", "the study's protocol is audioml's grouped one: one run fills both columns"))
        elif self.same.status == self.grouped.status != "ok" and self.same.reason == self.grouped.reason:
            return [("both", f"both protocols {self.same.status}: {self.same.reason}")]
        for column, label, result in (("same", "study's protocol", self.same), ("grouped", "grouped protocol",
                                                                               self.grouped)):
            if column == "same" and self.entry.study_protocol.same_as is not None:
                continue
            if result.status != "ok" and result.reason:
                log = f" (log: {result.log})" if result.status == "failed" and result.log else ""
                notes.append((column, f"{label} {result.status}: {result.reason}{log}"))
        return notes

    def csv_record(self) -> dict[str, str]:
        entry, record = self.entry, {}
        record.update(study=entry.study, system=entry.system, experiment=entry.experiment, runner=entry.runner.name,
                      metric=entry.reported.metric, study_protocol=entry.study_protocol.text,
                      reported_value=_number(entry.reported.value), reported=entry.reported.text,
                      grouped_protocol=entry.grouped_protocol.text, seconds=f"{self.seconds:.1f}",
                      notes="; ".join(text for _, text in self.notes()))
        for prefix, result in (("same_protocol", self.same), ("grouped", self.grouped)):
            record[f"{prefix}_status"] = result.status + (" (reused)" if result.reused else "")
            record.update({f"{prefix}_{k}": _number(v) for k, v in self.numbers(result).items()})
            record[f"{prefix}_seconds"] = f"{result.seconds:.1f}"
            record[f"{prefix}_run_dir"] = str(result.run_dir or "")
        return record


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``."""
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.csv_record())
    return path


def _cell(row: Row, result: JobResult, note: int | None) -> str:
    mark = f" [{note}]" if note is not None else ""
    if result.status != "ok":
        return result.status + mark
    numbers = row.numbers(result)
    text = f"{numbers['value']:.3f}"
    if numbers["ci_low"] is not None and numbers["ci_high"] is not None:
        text += f" [{numbers['ci_low']:.3f}, {numbers['ci_high']:.3f}]"
    return text + mark


def markdown_table(rows: Sequence[Row]) -> tuple[str, list[str]]:
    """The Markdown table and its numbered notes (skip and failure reasons)."""
    lines = ["| study | system | metric | study's protocol: reported | audioml, study's protocol "
             "| audioml, grouped protocol [95 % CI] | majority baseline | time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    for row in rows:
        numbers: dict[str, int] = {}
        for column, note in row.notes():
            notes.append(f"{row.entry.experiment}, {note}")
            numbers.setdefault(column, len(notes))
        if row.entry.study_protocol.same_as is not None:
            same = f"= grouped [{numbers['same']}]"
        else:
            same = _cell(row, row.same, numbers.get("same", numbers.get("both")))
        grouped = _cell(row, row.grouped, numbers.get("grouped", numbers.get("both")))
        shown = row.grouped if row.grouped.status == "ok" else row.same
        baseline = row.numbers(shown)["baseline"] if shown.status == "ok" else None
        reused = " (reused)" if row.grouped.reused or row.same.reused else ""
        lines.append(" | ".join([
            f"| {row.entry.study}", row.entry.system, row.entry.reported.metric.split("/", 1)[-1],
            f"{row.entry.study_protocol.text}: {row.entry.reported.text}", same, grouped,
            "" if baseline is None else f"{baseline:.3f}",
            format_seconds(row.seconds) + reused if row.seconds > 0 else "-"]) + " |")
    return "\n".join(lines), notes


def write_markdown(rows: Sequence[Row], path: Path, header: Sequence[str]) -> Path:
    """``reproduction.md``: ``header`` lines, the table, its notes."""
    table, notes = markdown_table(rows)
    text = "\n".join([*header, "", table, ""])
    if notes:
        text += "\n" + "\n".join(f"[{number}] {note}  " for number, note in enumerate(notes, 1)) + "\n"
    path.write_text(text)
    return path

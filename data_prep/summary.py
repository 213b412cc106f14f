"""What happened to the rows: kept, dropped by reason, removed by which filter.

A `Tally` counts one stream of rows (the training rows, or one evaluation set). `dropped`
holds rows that could not become a valid row (no answer found, empty solution, bad row when
`--skip-bad-rows` is on, ...); `filtered` holds valid rows removed by a filter the user asked
for or that is on by default (domain, source, duplicate, evaluation overlap, length).
Every row read ends up in exactly one of kept, dropped or filtered, and `check()` says so.
"""

from __future__ import annotations

from collections import Counter

MAX_LISTED_BAD_ROWS = 20  # in manifest.json
MAX_PRINTED_BAD_ROWS = 5  # in the printed summary


class Tally:
    def __init__(self, name: str):
        self.name = name
        self.read = 0
        self.kept = 0
        self.dropped: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.bad_row_messages: list[str] = []

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] += 1
        if message is not None and len(self.bad_row_messages) < MAX_LISTED_BAD_ROWS:
            self.bad_row_messages.append(message)

    def filter(self, name: str) -> None:
        self.filtered[name] += 1

    def check(self) -> None:
        accounted = self.kept + sum(self.dropped.values()) + sum(self.filtered.values())
        if accounted != self.read:
            raise AssertionError(f"{self.name}: {self.read} rows read but {accounted} accounted for")

    def as_dict(self) -> dict:
        result = {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "filtered": dict(sorted(self.filtered.items())),
        }
        if self.bad_row_messages:
            result["bad_rows_first"] = list(self.bad_row_messages)
        return result

    def format(self) -> str:
        lines = [f"{self.name}: read {self.read}, kept {self.kept}"]
        for title, counts in (("dropped", self.dropped), ("filtered", self.filtered)):
            if counts:
                lines.append(f"  {title} {sum(counts.values())}:")
                lines += [f"    {reason:<32} {count}" for reason, count in sorted(counts.items())]
        if self.bad_row_messages:
            lines.append("  first bad rows:")
            lines += [f"    {message}" for message in self.bad_row_messages[:MAX_PRINTED_BAD_ROWS]]
        return "\n".join(lines)


def view_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows carry each view name."""
    counts: Counter[str] = Counter()
    for row in rows:
        counts.update(view["name"] for view in row["extra_info"]["views"])
    return dict(sorted(counts.items()))

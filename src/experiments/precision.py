"""Lightning's precisions: the names a config may give, and the dtypes each computes in (torch-free)."""

from __future__ import annotations

# each precision's (autocast dtype or None, the dtype parameters and activations are kept in), as torch names
DTYPES: dict[str, tuple[str | None, str]] = {
    "32-true": (None, "float32"),
    "64-true": (None, "float64"),
    "bf16-mixed": ("bfloat16", "float32"),
    "16-mixed": ("float16", "float32"),
    "bf16-true": (None, "bfloat16"),
    "16-true": (None, "float16"),
}
SHORT_NAMES = {
    "32": "32-true",
    "64": "64-true",
    "16": "16-mixed",
    "bf16": "bf16-mixed",
}  # as Lightning reads them
SETTINGS = ("auto", *DTYPES, *SHORT_NAMES)  # what `precision=` accepts


def long_name(precision: str) -> str:
    """`bf16-mixed` for `bf16`: the record and the checks see only the long names."""
    return SHORT_NAMES.get(precision, precision)

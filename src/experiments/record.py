"""A run's record: summary.json (`RunRecord`, one definition for every writer and reader) and metrics.csv
(a row per epoch). Both are written atomically: a killed process never leaves half a file."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, BinaryIO, Union, get_args, get_origin, get_type_hints


def name_of(net: str, depth: object, dataset: str, seed: object) -> str:
    """`resnet56-cifar10-s0`: what runs, by the net's label (`RunRecord.arch`), depth, dataset and seed."""
    return f"{net}{depth}-{dataset}-s{seed}"


@dataclass
class RunRecord:
    """summary.json: what ran, what it costs, how it ended. Keys a command does not measure stay null."""

    # what ran
    command: str = "train"  # train | profile | probe
    status: str = "failed"  # completed | failed | diverged | interrupted; failed until the run says otherwise
    # the net's label (the spec's, as the papers name it: resnet, plain, densenet, densenet_bc, densenet_b or
    # densenet_c), under the key the file format fixes; not the arch config, which .hydra/config.yaml holds
    arch: str = ""
    depth: int = 0  # weighted layers, as in the papers
    dataset: str = ""
    seed: int = 0
    form: str = ""  # cifar | imagenet: the layout of the net
    stem: str = ""  # cifar (a 3x3 conv) | imagenet (7x7/2 conv and max-pool)
    memory_efficient: bool = False  # parts recomputed in backward instead of held
    pretrained: str | None = None  # where the starting weights came from; null: initialised at random
    batch_size: int = 0
    precision: str = ""  # the Lightning precision the steps ran in: 32-true, bf16-mixed, ...
    device: str = ""  # cpu, or the GPU's name
    sweep: str | None = None  # the multirun directory the run belongs to
    # what the net costs, counted on the meta device: exact, and the same on any machine
    params: int | None = None  # trainable parameters
    flops_per_image: int | None = None  # forward FLOPs of one image, a multiply-add counting 2
    macs_per_image: int | None = None  # forward multiply-adds of one image: what the papers call FLOPs
    activation_bytes: int | None = None  # bytes held for backward in one float32 training step
    activation_bytes_at_precision: int | None = None  # the same at the run's precision (autocast)
    # measured while training
    peak_memory_bytes: int | None = None  # CUDA allocator peak on a GPU, peak RSS growth on a CPU
    peak_memory_source: str | None = None  # which of the two, in words
    peak_memory_reserved_bytes: int | None = None  # the CUDA caching allocator's reserved peak
    step_time_ms: float | None = None  # median training step, warm-up and signal steps excluded
    step_time_p90_ms: float | None = None
    step_timing: str | None = None  # how the timed steps ran: eager | cuda_graph (replays) | mixed
    throughput: float | None = None  # training images per second over the timed span, data waits included
    data_wait_fraction: float | None = None  # share of the timed span spent between steps
    timed_steps: int | None = None
    first_step_unix_time: float | None = None  # when the first training step began
    cuda_graph_steps: int = 0  # training steps run as a CUDA-graph replay
    # results
    epochs: int | None = None  # epochs completed
    train_error: float | None = None  # fractions, final epoch
    val_error: float | None = None
    test_error: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    paper_test_error: float | None = None  # the matching paper's figure (fraction), null where none matches
    param_grad_norms: dict[str, list[float | None]] | None = None  # per part, the epoch's mean L2 norm of
    # its parameters' gradients (the per-block signals are in signals.csv)
    data: str | None = None  # probe: real or random, what the batch was
    packed_with: list[str] | None = None  # runs trained beside this one on the same GPU
    wall_time_s: float | None = None
    # what computed it (experiments.environment: versions, CPU, threads, numerical flags, GPU); of the first
    # segment where a run was resumed
    environment: dict[str, Any] | None = None
    environments: list[dict[str, Any]] | None = None  # a resumed run's, one per segment, the first first
    comet: dict[str, Any] = field(default_factory=lambda: {"mode": "disabled"})  # mode, url or archive
    error: str | None = None  # why it did not complete, in one line

    @property
    def name(self) -> str:
        """`resnet56-cifar10-s0`: the run's name in Comet, in its log lines and in its directory's."""
        return name_of(self.arch, self.depth, self.dataset, self.seed)

    def update(self, **values: Any) -> None:
        """Set fields by name (a name that is not a field is a bug: KeyError)."""
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise KeyError(f"RunRecord has no field {key!r}")
            setattr(self, key, value)

    @property
    def segments(self) -> list[dict[str, Any] | None]:
        """The environment of each segment of the run (one unless it was resumed)."""
        return self.environments or [self.environment]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """A record read back; a ValueError naming the first key of the wrong type. Unknown keys (from a
        newer or older version) are ignored, missing ones take their defaults."""
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        hints = get_type_hints(cls)
        values = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = _checked(f.name, data[f.name], hints[f.name])
        return cls(**values)


def _checked(key: str, value: Any, hint: Any) -> Any:
    if not _accepts(hint, value):
        raise ValueError(f"{key} is {json.dumps(value)[:40]}, which is not {hint}")
    return value


def _accepts(hint: Any, value: Any) -> bool:
    """Whether `value`, read from JSON, is of the type `hint` (its outer type only)."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        return type(None) in options
    for option in options:
        base = get_origin(option) or option
        if base in (int, float) and isinstance(value, bool):
            continue
        if isinstance(value, (int, float) if base is float else base):
            return True
    return False


def read_record(path: Path) -> RunRecord | None:
    """summary.json at `path`, or None when there is none; a ValueError when it is not a record."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON ({error})") from None
    return RunRecord.from_json(data)


@contextmanager
def replaced_whole(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, renamed over `path` when the block ends without error:
    `path` is whole, old or new, and a failed write (a full disk, a kill) leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as file:
            yield file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    with replaced_whole(path) as file:
        file.write(text.encode())


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_record(path: Path, record: RunRecord) -> None:
    write_json(path, record.to_json())


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as written (strings), or none if there is no file."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_metrics(path: Path) -> list[dict[str, float | str]]:
    """metrics.csv's rows, numbers as floats and empty cells left out."""
    return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in read_rows(path)]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV file of `rows`, its columns the union of theirs in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"arch": {"depth": 56}} -> {"arch.depth": 56}: Hydra's key names."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

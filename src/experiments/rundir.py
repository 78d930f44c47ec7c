"""A run's directory: named after its config, owned by one process while the run lives, never shared.

The name is `resnet56-cifar10-s0-1a2b3c`: what runs plus a hash of the whole config, so the same command (or
a requeued SLURM job) finds the same directory and its checkpoint, and two configs never share one. A
directory holding another config is refused before anything in it is touched. While a run trains, a lock
file names its holder (host, PID, SLURM job); a second process on the same run refuses, and a holder that
died (a SIGKILL, a crashed node, a requeued job) is recognised as gone, so its resume is not blocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import settings
from experiments.errors import UserError
from experiments.plan import Subject
from experiments.record import name_of
from experiments.specs import DENSENET_DEFAULTS

log = logging.getLogger(__name__)

# Keys left out of the hash at these values: a config saved without them names the same directory as one
# that holds them at these values, so a run saved without them is found by the same command.
HASH_NEUTRAL: dict[str, Any] = {
    "arch.stem": "auto",
    "arch.pretrained": None,
    "arch.freeze": "none",
    "measure.signals_every": "auto",
    "schedule.warmup_until_train_error": None,
    "deterministic": False,
}


def hashed(cfg: DictConfig) -> dict[str, Any]:
    """The part of a config that names its run, as a plain dict without `hydra`: neutral keys whose value
    (resolved: an experiment may compute one) is the neutral one left out, and a DenseNet's form-dependent
    nulls as the values they become, so that `arch=densenet` and `arch=densenet40` (the same net) share a
    directory. The rest stays as written, interpolations unresolved."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    drop_neutral(config, lambda dotted: _resolved(cfg, dotted))
    arch = config.get("arch")
    if isinstance(arch, dict) and arch.get("name") == "densenet":
        defaults = DENSENET_DEFAULTS.get(arch.get("form"), {})
        arch.update({k: v for k, v in defaults.items() if k in arch and arch[k] is None})
    return config


def drop_neutral(config: dict[str, Any], value_of: Callable[[str], Any]) -> None:
    """Take out of `config` (a plain nested dict) each HASH_NEUTRAL key whose value, as `value_of` reads it,
    is the neutral one: a config saved before the key existed names the same run."""
    for dotted, neutral in HASH_NEUTRAL.items():
        if value_of(dotted) == neutral:
            pop_key(config, dotted)


def pop_key(config: dict[str, Any], dotted: str) -> None:
    """Remove `a.b.c` from a plain nested dict, where it is."""
    *parents, key = dotted.split(".")
    node: Any = config
    for parent in parents:
        node = node.get(parent) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(key, None)


def _resolved(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # an interpolation that cannot resolve here: not the neutral value
        return _UNRESOLVABLE


_UNRESOLVABLE = object()


def config_hash(cfg: DictConfig) -> str:
    return hashlib.sha1(json.dumps(hashed(cfg), sort_keys=True, default=str).encode()).hexdigest()[:6]


def run_name(parent: str = "", *, _root_: DictConfig) -> str:
    """The `run_name` resolver of conf/hydra/default.yaml: `[parent/]resnet56-cifar10-s0-1a2b3c`, the run's
    label (as Comet and the report name it: `arch=resnet arch.shortcut=none` is plain56) and its config's
    hash. Where `parent` holds the run under the name its arch config spells (`resnet56-...`, as earlier
    versions named every run) and not under its label, that directory is the run's."""
    arch, depth, dataset, seed = (
        OmegaConf.select(_root_, key, default="")
        for key in ("arch.name", "arch.depth", "dataset.name", "seed")
    )
    digest = config_hash(_root_)
    as_written = name = f"{name_of(arch, depth, dataset, seed)}-{digest}"
    try:
        spec = settings.check_arch(Subject.of(_root_))
        name = f"{name_of(spec.label, spec.depth, dataset, seed)}-{digest}"
    except Exception:  # a config that cannot run is named as written; the job then refuses it in one line
        pass
    if parent and (Path(parent) / as_written).is_dir() and not (Path(parent) / name).exists():
        name = as_written
    return str(Path(parent) / name) if parent else name


def unique_dir(pattern: str) -> str:
    """A new directory named by `pattern` (strftime), suffixed -2, -3, ... when a sweep already took it."""
    base = time.strftime(pattern)
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not create a new sweep directory under {base}")


# Cached: Hydra copies resolver caches into every job's config (and pickles them for SLURM jobs), so a
# sweep's directory is resolved once and stays the same for all its jobs, requeued ones included.
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True, replace=True)


def remove_if_empty(directory: Path, parents: int = 0) -> None:
    """Remove `directory` if it is empty, then as many as `parents` of its parents that are left empty (a run
    or sweep that wrote nothing takes away the folders made for it)."""
    for folder in [directory, *directory.parents][: parents + 1]:
        if not folder.is_dir() or any(folder.iterdir()) or folder == Path.cwd():
            return
        folder.rmdir()


def saved_config(run_dir: Path) -> DictConfig | None:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception:
        return OmegaConf.create({"unreadable": str(path)})


def check_config(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse `run_dir` when it holds another run's config, or files that are no run's (a folder of the
    user's given as hydra.run.dir): nothing of it may be touched."""
    saved = saved_config(run_dir)
    if saved is None:
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME) if run_dir.is_dir() else []
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UserError(
                f"{run_dir} holds files that are not a run's ({shown}); nothing was changed: give a new or "
                "empty hydra.run.dir"
            )
        return
    new, old = hashed(cfg), hashed(saved)
    if new != old:
        raise UserError(
            f"{run_dir} holds another run ({_first_difference(old, new)}); nothing was changed: give "
            "another hydra.run.dir"
        )


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                return _first_difference(
                    old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}."
                )
    return f"{prefix.rstrip('.')}: {old!r} there, {new!r} here"


LOCK_NAME = ".lock"
HEARTBEAT_S = 20  # the holder touches its lock this often...
STALE_AFTER_S = 180  # ...so one on another host that has not in this long is gone


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, from /proc): tells a live process from a reused PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory: written into its lock file."""

    host: str
    pid: int
    started: str | None  # the process's start time (Linux), None where unknown
    slurm_job: str | None
    slurm_restart: int

    @classmethod
    def me(cls) -> Holder:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=_process_start(os.getpid()),
            slurm_job=os.environ.get("SLURM_JOB_ID"),
            slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        )

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"process {self.pid} on {self.host}{job}"

    def gone(self, lock: Path) -> bool:
        """Whether this holder can no longer be running the run."""
        me = Holder.me()
        if self.slurm_job and self.slurm_job == me.slurm_job:
            return me.slurm_restart > self.slurm_restart  # this job was requeued: its last run is over
        if self.host == me.host:
            return not Path(f"/proc/{self.pid}").exists() or _process_start(self.pid) != self.started
        return time.time() - lock.stat().st_mtime > STALE_AFTER_S


class RunLock:
    """The lock file of a run directory: created atomically, refreshed while held, removed on release."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.text = json.dumps(asdict(Holder.me()))
        self._stop = threading.Event()

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.text)
            threading.Thread(target=self._heartbeat, name="run-lock", daemon=True).start()
            return
        raise UserError(f"could not lock {self.path.parent}: other processes keep taking it")

    def _break_if_stale(self) -> None:
        """Remove the lock of a holder that is gone; a live holder is the user's one-line error."""
        try:
            text = self.path.read_text()
            holder = Holder(**json.loads(text))
        except FileNotFoundError:
            return
        except (ValueError, TypeError):  # being written this instant, or damaged long ago
            if time.time() - self.path.stat().st_mtime < 10:
                raise UserError(f"{self.path.parent} is being claimed by another process") from None
            holder, text = None, None
        if holder is not None and not holder.gone(self.path):
            raise UserError(
                f"{self.path.parent} is in use by another run ({holder.describe()}); wait for it to end"
            )
        # take the stale lock aside, and give it back if someone renewed it meanwhile
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)
            if text is not None and aside.read_text() != text:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            aside.unlink()
        if holder is not None:
            log.info(f"{self.path.parent}: the last holder ({holder.describe()}) is gone; taking over")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            if self.path.read_text() == self.text:
                self.path.unlink()


RANK_ZERO_WAIT_S = 300  # rank 0 may start later than the others (imports on a busy node)


def _wait_for_rank_zero(run_dir: Path) -> None:
    me = Holder.me()
    deadline = time.monotonic() + RANK_ZERO_WAIT_S
    while time.monotonic() < deadline:
        try:
            holder = Holder(**json.loads((run_dir / LOCK_NAME).read_text()))
        except (OSError, ValueError, TypeError):  # not there yet, or being written
            holder = None
        if holder and holder.slurm_job == me.slurm_job and holder.slurm_restart == me.slurm_restart:
            return
        time.sleep(0.5)
    raise UserError(
        f"{run_dir}: rank 0 of SLURM job {me.slurm_job} did not take the run in {RANK_ZERO_WAIT_S} s "
        "(its log says why)"
    )


@contextlib.contextmanager
def owned(run_dir: Path, rank: int = 0) -> Iterator[None]:
    """Hold `run_dir` for the block: another process on it refuses with one line naming the holder. The
    tasks of one SLURM job are one run: rank 0 holds the lock, and each other rank waits until the lock
    names its job (this start of it) before it trains."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank != 0:
        _wait_for_rank_zero(run_dir)
        yield
        return
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()

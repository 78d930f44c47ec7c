"""What a run's plan needs from this machine, checked before its directory is made: the files and folders it
names, a GPU it asks for, a Comet API key it insists on. One line per refusal, as the settings table's."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from experiments.errors import UserError
from experiments.plan import Plan


def check(plan: Plan) -> None:
    """Raise a one-line UserError for the first thing `plan` needs that is not here."""
    check_paths(plan)
    check_accelerator(plan.recipe.accelerator)
    if plan.logger.name == "comet":
        check_comet_key(plan.logger.online)


def check_paths(plan: Plan) -> None:
    """Files and folders the plan names must be there, and be what they should."""
    if path := plan.recipe.ckpt_path:
        if path.is_dir():
            last = path / "checkpoints" / "last.ckpt"
            hint = f" (its checkpoint: ckpt_path={last})" if last.is_file() else ""
            raise UserError(f"ckpt_path: {path} is a folder, not a checkpoint file{hint}")
        if not path.is_file():
            raise UserError(f"ckpt_path: {path} does not exist")
        if not _is_checkpoint(path):
            raise UserError(
                f"ckpt_path: {path} is not a PyTorch checkpoint (a zip archive that torch.save wrote)"
            )
    dataset = plan.subject.dataset
    if dataset.get("_target_", "").endswith("ImageFolderData"):
        check_imagefolder_root(Path(dataset["path"]).expanduser())
    if data_dir := dataset.get("data_dir"):
        check_data_dir(Path(data_dir).expanduser())


def check_data_dir(path: Path) -> None:
    """Where downloaded datasets go: a folder, or nothing yet (it is made when a download needs it)."""
    if path.exists() and not path.is_dir():
        named_by = " (EXPERIMENTS_DATA_DIR)" if os.environ.get("EXPERIMENTS_DATA_DIR") == str(path) else ""
        raise UserError(
            f"dataset.data_dir{named_by}: {path} is a file, not a folder; name a folder for the datasets"
        )


def check_imagefolder_root(root: Path) -> None:
    """An image-folder dataset's root must hold train/ and val/ folders."""
    for folder in ("train", "val"):
        if not (root / folder).is_dir():
            raise UserError(
                f"dataset.path: {root / folder} is not a folder; imagefolder needs PATH/train/<class>/ "
                "and PATH/val/<class>/ image folders"
            )


def check_accelerator(accelerator: str) -> None:
    """A GPU asked for must be there (the one check that imports torch, and only when a GPU is asked for)."""
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"trainer.accelerator={accelerator} but no CUDA GPU is visible here; use trainer=cpu or "
                "trainer=default"
            )


def check_comet_key(online: str | bool | None) -> None:
    """logger.online=true needs a Comet API key (looked for only then)."""
    if online is True and not comet_api_key():
        raise UserError("logger.online=true but no Comet API key: set COMET_API_KEY or run `comet login`")


def comet_api_key() -> str | None:
    """The Comet API key as comet_ml finds it: COMET_API_KEY, else its config file (read only when asked:
    importing comet_ml takes a second)."""
    from comet_ml.config import get_api_key, get_config

    return get_api_key(None, get_config())


def _is_checkpoint(path: Path) -> bool:
    """A file that torch.save wrote: a zip archive holding a pickle (read without torch)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False

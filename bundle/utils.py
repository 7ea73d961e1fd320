"""Small helpers the configs call: provenance tags, keeping old checkpoints, saving the resolved config."""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import time
import warnings
from collections.abc import Sequence

from bundle.errors import BundleError

__all__ = [
    "as_bool",
    "backup_existing",
    "cleanup_distributed",
    "config_tunables",
    "git_commit",
    "init_distributed",
    "is_rank0",
    "package_versions",
    "parse_overrides",
    "provenance_tags",
    "rank0_first",
    "require_file",
    "run_engine",
    "save_figure",
    "save_resolved_config",
]

logger = logging.getLogger(__name__)

PACKAGES = (
    "torch",
    "monai",
    "numpy",
    "pytorch-ignite",
    "mlflow",
    "nibabel",
    "pydicom",
    "itk",
    "scikit-image",
    "scikit-learn",
)


def as_bool(value) -> bool:
    """A flag from a config or the command line: ``"false"``, ``"0"``, ``"no"``, ``"off"``, ``""`` and None are False.

    (``python -m monai.bundle run ... --flag false`` passes the string ``"false"``, which Python finds true.)

    Raises:
        ValueError: for a string that is not a recognisable flag.
    """
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off", "", "none", "null"):
            return False
        raise ValueError(f"expected a true/false flag, got {value!r}")
    return bool(value)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` ("missing" where not installed)."""
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "missing"
    return out


def git_commit(path: str = ".") -> str:
    """The git commit of the repository holding ``path`` (with ``-dirty`` when it has local changes), or "unknown"."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", path, *a], capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(bundle_root: str = ".") -> dict[str, str]:
    """Tags every run carries: package versions, python, platform and the bundle's git commit."""
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    tags.update(
        {
            "version.python": platform.python_version(),
            "platform": platform.platform(),
            "git_commit": git_commit(bundle_root),
        }
    )
    try:
        import torch

        tags["device.cuda"] = str(torch.cuda.is_available())
    except ImportError:
        pass
    return tags


def save_figure(fig, path: str, dpi: int = 90) -> str:
    """Lay out a matplotlib figure, write it to ``path`` (creating its folder) and close it.

    Returns:
        ``path``.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def backup_existing(path: str, overwrite: bool = False, companions: Sequence[str] = ()) -> str | None:
    """Keep an existing file before a run replaces it: moved to ``<stem>.<time><suffix>`` beside it.

    Files beside it with the same stem and a suffix of ``companions`` move with it to ``<stem>.<time><companion>``:
    ``[".json"]`` for a checkpoint, so the kept checkpoint keeps its plan and the run writes a new one.

    Args:
        path: file a run is about to write (e.g. ``models/model.pt``).
        overwrite: True lets the run replace the file without a copy.
        companions: suffixes of the files that move with it (default none).

    Returns:
        the backup path, or None when nothing was moved.
    """
    if overwrite or not os.path.isfile(path):
        return None
    stem, suffix = os.path.splitext(path)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    n = 1
    while any(os.path.exists(f"{stem}.{stamp}{s}") for s in (suffix, *companions)):
        stamp, n = f"{time.strftime('%Y%m%d_%H%M%S')}_{n}", n + 1
    backup = f"{stem}.{stamp}{suffix}"
    shutil.move(path, backup)
    logger.info(f"kept the previous {path} as {backup}")
    for extra in companions:
        if extra != suffix and os.path.isfile(stem + extra):
            shutil.move(stem + extra, f"{stem}.{stamp}{extra}")
            logger.info(f"kept the previous {stem + extra} as {stem}.{stamp}{extra}")
    return backup


def _plain(value, nested: bool = False) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if value is None or isinstance(value, (bool, int, float)):
        return True
    return not nested and isinstance(value, list) and all(_plain(v, nested=True) for v in value)


def config_tunables(config: dict) -> dict:
    """The tunables of a bundle config: its top-level entries whose values are plain, as the configs keep their
    knobs (numbers, booleans, nulls, strings that are not ``$`` expressions, ``@`` references or ``%`` macros, and
    flat lists of those); ids starting with ``_`` are left out.

    Args:
        config: a merged bundle config as a dict (``ConfigParser.get()``, or the run's ``config.json``).

    Returns:
        ``{id: value}`` in the config's order.
    """
    return {k: v for k, v in config.items() if not str(k).startswith("_") and _plain(v)}


def save_resolved_config(path: str) -> str | None:
    """Write the config of the running bundle workflow (all files merged, command-line overrides applied) as JSON.

    The bundle runner gives expressions no handle on its parser, so the parser is looked up in the calling
    frames (the expression is evaluated inside ``ConfigParser.get_parsed_content``).

    Args:
        path: output JSON path.

    Returns:
        ``path``, or None when called outside a bundle config.
    """
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(candidate.get(), f, indent=1, default=str)
            return path
        frame = frame.f_back
    logger.warning("save_resolved_config: not called from a bundle config; nothing saved")
    return None


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_rank0() -> bool:
    """True in a single process and on the global rank 0 of a distributed run (``RANK`` set by ``torchrun``)."""
    dist = _dist()
    return (dist.get_rank() if dist else int(os.environ.get("RANK", "0"))) == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); nothing otherwise.

    NCCL on CUDA, gloo on CPU; each process uses the GPU of its ``LOCAL_RANK``. Multi-node runs need nothing
    more: ``torchrun``'s rendezvous sets the environment this reads.

    Args:
        backend: process-group backend; None picks "nccl" when CUDA is available, else "gloo".

    Returns:
        whether this process is part of a distributed run.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return True


def cleanup_distributed() -> None:
    """Leave the process group, if any (the last step of a distributed run)."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def rank0_first():
    """Let the global rank 0 do a block first (write a cache, a demo set) while the other ranks wait, then them.

    A no-op outside a distributed run.
    """
    dist = _dist()
    if dist is not None and dist.get_rank() > 0:
        dist.barrier()
    try:
        yield
    finally:
        if dist is not None and dist.get_rank() == 0:
            dist.barrier()


def require_file(path: str, what: str = "file", hint: str = "") -> str:
    """Stop with one line naming ``path`` when it does not exist (e.g. a checkpoint an evaluation needs).

    Args:
        path: the file.
        what: what it is, for the message.
        hint: how to produce it, appended to the message.

    Returns:
        ``path``.

    Raises:
        BundleError: ``no <what> at <path>; <hint>`` (printed as ``ERROR: ...``).
    """
    if not os.path.isfile(path):
        raise BundleError(f"no {what} at {path}" + (f"; {hint}" if hint else ""))
    return path


def run_engine(engine, enabled: bool = True, reason: str = "") -> bool:
    """Run an ignite engine when ``enabled`` (a config switch, e.g. ``pretrain_epochs > 0``); log why not otherwise.

    Returns:
        whether it ran.
    """
    if not enabled:
        logger.warning(f"skipped {type(engine).__name__}" + (f": {reason}" if reason else ""))
        return False
    engine.run()
    return True


def parse_overrides(args: list[str]) -> dict:
    """``--name value`` pairs as config overrides; values are read as YAML (``64``, ``null``, ``[1, 2]``).

    Raises:
        ValueError: on an argument that is not ``--name`` or a name without a value.
    """
    import yaml

    out, i = {}, 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--") or len(key) < 3:
            raise ValueError(f"expected --name value, got {key!r}")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            raise ValueError(f"{key} needs a value")
        out[key[2:]] = yaml.safe_load(value)
    return out


QUIET_LOGGERS = ("pydicom", "monai.data.nvimgcodec_pydicom_plugin")  # as configs/logging.conf sets them


def quiet_third_party() -> None:
    """The entry points' settings for third-party noise, as ``configs/logging.conf`` gives the workflows.

    pydicom logs a value warning for every odd tag of a real export, and MONAI's optional GPU DICOM decoder
    (nvImageCodec, absent on CPU machines) warns at every ``LoadImage``; errors still show. Called by the scripts
    (:func:`bundle.errors.entry_point`), never at import: a library user's logging stays theirs.
    """
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")

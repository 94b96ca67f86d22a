"""Pretrained checkpoints: download, verify, convert ``.pt`` -> ``.safetensors``, load.

Official EfficientAT weights ship as pickled ``.pt`` state dicts. tympan unpickles such a file
exactly once, with ``weights_only=True`` (no code execution), validates it against the
architecture, and from then on uses a ``.safetensors`` copy, which loads without unpickling
anything (the same rule the model bundle follows). Every mismatch is reported by key with the
expected and found shapes, because a silently half-loaded network is the worst failure here.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tympan.download import download, sha256_file
from tympan.models.registry import build_model

#: EfficientAT ``mn04_as`` (AudioSet mAP 43.2), release v0.0.1 of fschmid56/EfficientAT.
MN04_AS_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt"
MN04_AS_SHA256 = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"
#: Short names accepted by :func:`resolve_init`: name -> (url, sha256, arch, n_classes).
PRETRAINED: dict[str, tuple[str, str, str, int]] = {
    "mn04_as": (MN04_AS_URL, MN04_AS_SHA256, "mn04", 527),
}

_MAX_LISTED = 10  # problems named per category in an error message


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the architecture; the message names every bad key."""


def default_cache_dir() -> Path:
    """``$TYMPAN_CACHE/weights``, else ``~/.cache/tympan/weights`` (XDG's default place)."""
    root = os.environ.get("TYMPAN_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    ) / "tympan"
    return Path(root) / "weights"


# --------------------------------------------------------------------------- validation


def expected_state(arch: str = "mn04", n_classes: int = 527, **params: Any) -> dict[str, Tensor]:
    """The state dict an architecture has (a freshly built model's; only shapes/dtypes matter)."""
    return build_model(arch, n_classes=n_classes, **params).state_dict()


def check_state_dict(
    found: Mapping[str, Any],
    expected: Mapping[str, Tensor],
    skip_prefixes: Iterable[str] = (),
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``found`` fits ``expected`` exactly.

    Keys under ``skip_prefixes`` are ignored on both sides. Missing keys, unexpected keys,
    non-tensors, and shape or dtype differences are all collected, so one error lists them all.
    """
    skip = tuple(skip_prefixes)
    want = {k: v for k, v in expected.items() if not k.startswith(skip)} if skip else dict(expected)
    have = {k: v for k, v in found.items() if not k.startswith(skip)} if skip else dict(found)
    problems: list[str] = []
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    bad: list[str] = []
    for key, ref in want.items():
        if key not in have:
            continue
        got = have[key]
        if not isinstance(got, Tensor):
            bad.append(f"{key}: expected a tensor, found {type(got).__name__}")
        elif tuple(got.shape) != tuple(ref.shape):
            bad.append(f"{key}: expected shape {tuple(ref.shape)}, found {tuple(got.shape)}")
        elif got.dtype != ref.dtype:
            bad.append(f"{key}: expected dtype {ref.dtype}, found {got.dtype}")
    if bad:
        problems.append(_listing("mismatched tensors", bad))
    if problems:
        raise CheckpointMismatchError("checkpoint does not fit the architecture: " + "; ".join(problems))


def _head_fits(found: Mapping[str, Any], expected: Mapping[str, Tensor], skip: tuple[str, ...]) -> bool:
    """Whether ``found`` has every head tensor of ``expected`` (keys under ``skip``) with its shape."""
    head = {k: v for k, v in expected.items() if k.startswith(skip)}
    return bool(head) and all(
        isinstance(found.get(k), Tensor) and tuple(found[k].shape) == tuple(v.shape) for k, v in head.items())


def _listing(what: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {what}: {shown}{more}"


# --------------------------------------------------------------------------- conversion


def convert_checkpoint(
    src_pt: Path,
    dst_safetensors: Path,
    arch: str = "mn04",
    n_classes: int = 527,
) -> dict[str, Any]:
    """Validate an official ``.pt`` state dict and write it as ``.safetensors``, atomically.

    The source is read once: its bytes are hashed and then unpickled from memory with
    ``weights_only=True``. The output appears only complete (temp file + ``os.replace``), so
    a crash never leaves a truncated file where a cache expects a good one. Returns a summary
    (arch, paths, source sha256, tensor count, trainable parameter count) for logs.
    """
    src_pt, dst_safetensors = Path(src_pt), Path(dst_safetensors)
    raw = src_pt.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors have no common base
        raise CheckpointMismatchError(f"{src_pt}: not a loadable PyTorch checkpoint ({exc})") from exc
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(
            f"{src_pt}: expected a plain state dict (key -> tensor), found {type(state).__name__}"
        )
    model = build_model(arch, n_classes=n_classes)
    expected = model.state_dict()
    trainable = {k for k, _ in model.named_parameters()}
    try:
        check_state_dict(state, expected)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(f"{src_pt}: {exc}") from None
    tensors = {k: state[k].detach().contiguous() for k in expected}  # the architecture's order
    metadata = {"format": "pt", "arch": arch, "n_classes": str(n_classes), "source_sha256": digest}
    _atomic_save(tensors, dst_safetensors, metadata)
    return {
        "arch": arch,
        "n_classes": n_classes,
        "source": str(src_pt),
        "source_sha256": digest,
        "destination": str(dst_safetensors),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for k, t in tensors.items() if k in trainable),
    }


def _atomic_save(tensors: dict[str, Tensor], dst: Path, metadata: dict[str, str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_pretrained(
    model: nn.Module,
    path: Path,
    skip_prefixes: Iterable[str] = (),
) -> nn.Module:
    """Load a ``.safetensors`` checkpoint into ``model`` after an exact key/shape check.

    ``skip_prefixes`` (an :class:`~tympan.models.registry.ArchSpec`'s ``head_prefixes``)
    leaves those parameters at their initialisation and ignores them in the file, for
    fine-tuning with a new output layer.
    Returns ``model``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file; convert a .pt with resolve_init()")
    state = load_file(str(path), device="cpu")
    skip = tuple(skip_prefixes)
    if skip and _head_fits(state, model.state_dict(), skip):
        skip = ()  # a model of this label set (e.g. a bundle's): continue from its head too
    try:
        check_state_dict(state, model.state_dict(), skip)
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(f"{path}: {exc}") from None
    keep = {k: v for k, v in state.items() if not k.startswith(skip)} if skip else state
    result = model.load_state_dict(keep, strict=False)
    left = [k for k in result.missing_keys if not k.startswith(skip)]
    if left or result.unexpected_keys:  # unreachable after check_state_dict; kept as a guard
        raise CheckpointMismatchError(f"{path}: not loaded: {left + list(result.unexpected_keys)}")
    return model


def load_efficientat(
    model: nn.Module,
    init: str | Path,
    skip_prefixes: Iterable[str] = (),
    cache_dir: Path | None = None,
) -> nn.Module:
    """Resolve an EfficientAT ``--init`` (:func:`resolve_init`) and load it (:func:`load_pretrained`).

    The pretrained loader of the ``mn04`` :class:`~tympan.models.registry.ArchSpec`.
    """
    return load_pretrained(model, resolve_init(init, cache_dir=cache_dir), skip_prefixes=skip_prefixes)


# --------------------------------------------------------------------------- download


def download_pretrained(
    url: str,
    cache_dir: Path,
    sha256: str,
    filename: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` into ``cache_dir`` once, verified against ``sha256``; return its path.

    A cached file with the right hash is returned without touching the network. Bytes arrive
    in ``<name>.part`` with a tqdm bar; an interrupted download resumes with an HTTP ``Range``
    request (a server that ignores it restarts the file), and a hash mismatch deletes the
    ``.part`` and raises :class:`tympan.download.DownloadError`. The transfer itself is
    :func:`tympan.download.download`, the one downloader tympan has.
    """
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot name the download of {url!r}; pass filename=")
    return download(url, Path(cache_dir) / name, sha256=sha256.lower(), progress=progress)


# --------------------------------------------------------------------------- resolution


def resolve_init(
    init: str | Path,
    cache_dir: Path | None = None,
    arch: str = "mn04",
    n_classes: int = 527,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Turn a user's ``--init`` into a validated ``.safetensors`` path.

    Accepts a short name from :data:`PRETRAINED` (``"mn04_as"``), an http(s) URL (downloaded
    and verified: pass ``sha256`` unless the URL is a known release), a local ``.pt``
    (converted once into the cache, keyed by its content hash so an edited file is
    re-converted), a local ``.safetensors`` (returned as is; :func:`load_pretrained`
    validates it), or a bundle folder (its ``model.safetensors``: fine-tuning a trained model
    further, head included when it fits).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = str(init)
    if text in PRETRAINED:
        url, known_sha, arch, n_classes = PRETRAINED[text]
        return _from_url(url, known_sha, cache, arch, n_classes, progress)
    if text.startswith(("http://", "https://")):
        known = {u: s for u, s, _, _ in PRETRAINED.values()}
        pinned = sha256 or known.get(text)
        if pinned is None:
            raise ValueError(f"{text}: unknown URL; pass its sha256 so the download can be verified")
        return _from_url(text, pinned, cache, arch, n_classes, progress)
    path = Path(init).expanduser()
    weights = bundle_weights(path)
    if weights is not None:
        return weights  # a bundle: continue training its model
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such checkpoint (expected a .pt, a .safetensors, a URL or one of "
            f"{', '.join(sorted(PRETRAINED))})"
        )
    if path.suffix == ".safetensors":
        return path
    if path.suffix in (".pt", ".pth"):
        return _converted(path, sha256_file(path), cache, arch, n_classes)
    raise ValueError(f"{path}: unsupported checkpoint type {path.suffix!r}; use .pt or .safetensors")


def bundle_weights(init: str | Path) -> Path | None:
    """The weights file of ``init`` if it names a bundle folder (``bundle.json`` + ``model.safetensors``), else None.

    Why one predicate: loading, provenance and the training CLI's class/front-end check must
    agree on what counts as a bundle given to ``--init``.
    """
    path = Path(init).expanduser()
    if path.is_dir() and (path / "bundle.json").is_file() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    return None


def _from_url(url: str, sha: str, cache: Path, arch: str, n_classes: int, progress: bool) -> Path:
    pt = download_pretrained(url, cache, sha, progress=progress)
    return _converted(pt, sha.lower(), cache, arch, n_classes)


def _converted(pt: Path, digest: str, cache: Path, arch: str, n_classes: int) -> Path:
    """Cached ``.safetensors`` for a ``.pt`` with content hash ``digest``; converts on a miss."""
    dst = cache / f"{pt.stem}-{digest[:16]}.safetensors"
    if not dst.exists():
        convert_checkpoint(pt, dst, arch=arch, n_classes=n_classes)
    return dst

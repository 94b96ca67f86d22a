"""``tympan train`` and ``tympan evaluate``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from tympan.features import FrontendConfig
from tympan.training.augment import AugmentConfig
from tympan.training.field_augment import MelFieldConfig
from tympan.training.loop import TrainConfig, TrainingConfigError, pretrained_spec


def parse_arch_params(items: list[str] | None) -> dict[str, Any]:
    """``["width=8", "dropout=0.2"]`` -> ``{"width": 8, "dropout": 0.2}`` (values parsed as JSON)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TrainingConfigError(f"--arch-param {item!r}: expected KEY=VALUE, e.g. width=32")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def field_mel_with(base: MelFieldConfig, items: list[str]) -> MelFieldConfig:
    """The recipe's log-mel field augmentation with ``--field-mel K=V`` overrides (``p_noise=0.7``,
    ``snr_db=[-5,20]``): a stronger or narrower setting is an experiment, not a new recipe, and
    it lands in the config hash like any other training field."""
    known = {f.name for f in dataclasses.fields(MelFieldConfig)}
    params = parse_arch_params(items)
    unknown = sorted(set(params) - known)
    if unknown:
        raise TrainingConfigError(f"--field-mel: unknown {unknown}; known {sorted(known)}")
    out = MelFieldConfig.from_dict({**base.to_dict(), **params})
    try:
        out.validate()
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"--field-mel: {exc}") from None
    return out


def resolve_frontend(spec: str | None, arch: str, init: str | None) -> FrontendConfig:
    """``default`` | ``efficientat`` | a JSON file; unset means the architecture's default.

    That default is its :class:`~tympan.models.registry.ArchSpec`'s ``frontend`` (efficientat
    for mn04, whose pretrained weights expect it). An unknown ``arch`` gets ``default`` here
    and fails where the model is built. ``init`` is accepted for callers' convenience: an
    architecture's pretrained weights expect its default front end.
    """
    del init  # the default front end is the one an arch's pretrained weights expect
    if spec is None:
        from tympan.models import UnknownArchitectureError, get_spec

        try:
            spec = get_spec(arch).frontend
        except UnknownArchitectureError:
            spec = "default"
    try:
        return FrontendConfig.from_spec(spec)
    except ValueError as exc:
        raise TrainingConfigError(str(exc)) from None


def _defaults_for(arch: str, init: str | None) -> dict[str, Any]:
    """The spec's training defaults (measured on ESC-50; overridable on the command line)."""
    from tympan.models import UnknownArchitectureError, get_spec
    from tympan.models.registry import DEFAULT_TRAIN_DEFAULTS

    try:
        return get_spec(arch).training_defaults(pretrained=bool(init))
    except UnknownArchitectureError:  # reported below, with the list of known ones
        return dict(DEFAULT_TRAIN_DEFAULTS)


#: where a development checkout keeps the mn04_as weights (beside the repository)
LOCAL_WEIGHTS_HINT = "../shared/weights/efficientat-mn04_as/mn04_as_mAP_432.pt"


def _fetch_init(init: str, *, quiet: bool) -> None:
    """Resolve ``--init`` (download and convert into the weights cache) or fail in one line.

    Offline, a named release cannot be downloaded: say so at once and point at a local file,
    rather than after featurising the whole data set.
    """
    from tympan.download import DownloadError
    from tympan.models.convert import PRETRAINED, resolve_init

    try:
        resolve_init(init, progress=not quiet)
    except DownloadError as exc:
        local = Path(LOCAL_WEIGHTS_HINT)
        hint = (f"--init {local}" if local.is_file() else
                f"--init PATH/{Path(PRETRAINED[init][0]).name}" if init in PRETRAINED else "--init PATH.pt")
        raise TrainingConfigError(f"--init {init}: {exc}; without network, pass a local copy of the weights "
                                  f"({hint})") from None


def check_bundle_init(init: str, frontend: FrontendConfig, classes: list[str]) -> None:
    """A bundle as ``--init`` must have the training data's classes (in order) and front end.

    Why: its head is kept (fine-tuning a trained model further), so a different label order
    would train every class towards another's weights, and a different front end would feed it
    features it never saw.
    """
    from tympan.bundle import read_metadata
    from tympan.errors import BundleError
    from tympan.models.convert import bundle_weights

    if bundle_weights(init) is None:
        return
    try:  # the bundle reader's checks: strict JSON, size cap, no links, the BundleMeta contract
        meta = read_metadata(Path(init).expanduser())
    except BundleError as exc:
        raise TrainingConfigError(f"--init {init}: {exc}") from None
    theirs = FrontendConfig.from_dict(meta["frontend"])
    their_classes = list(meta["classes"])
    if their_classes != classes:
        raise TrainingConfigError(f"--init {init}: the bundle's {len(their_classes)} classes differ from the "
                                  f"data's {len(classes)} (or their order); fine-tune from pretrained weights instead")
    if theirs.fingerprint() != frontend.fingerprint():
        raise TrainingConfigError(f"--init {init}: the bundle's front end ({theirs.name}) differs from the "
                                  f"training front end ({frontend.name}); pass --frontend FILE.json with its settings")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, but not "None" / "False", nor twice where the help says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def cmd_train(args: argparse.Namespace) -> int:
    from tympan.training.cv import (
        CONFIG,
        RunDirError,
        bundle_from_run,
        default_run_dir,
        featureset_for,
        parse_folds,
        run_cv,
    )

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG).is_file():
            raise RunDirError(f"--resume {run_dir}: not a run directory ({CONFIG} is missing)")
        meta = json.loads((run_dir / CONFIG).read_text())
        config = TrainConfig.from_dict(meta["train"])
        frontend = FrontendConfig.from_dict(meta["frontend"])
        holdout_text = ",".join(str(f) for f in meta["holdout_folds"])
        data_dir = args.data_dir or meta.get("data", {}).get("root")
    else:
        fields = _defaults_for(args.arch, args.init)
        fields.update(
            arch=args.arch,
            arch_params=parse_arch_params(args.arch_param),
            seed=args.seed,
            device=args.device,
            init=args.init,
            field_augment=args.field_augment,
            field_augment_p=args.field_augment_p,
        )
        if args.epochs is not None:
            fields["epochs"] = args.epochs
        config = TrainConfig(**fields)
        frontend = resolve_frontend(args.frontend, args.arch, args.init)
        config.augment = AugmentConfig(
            mixup_alpha=args.mixup, norm_std=frontend.norm_std,
        )
        from tympan.training.recipes import apply_recipe

        config = apply_recipe(config, args.recipe, epochs=args.epochs)
        for name in ("batch_size", "lr"):  # explicit values win over the recipe's
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        if args.field_mel:
            config.field_mel = field_mel_with(config.field_mel, args.field_mel)
        config.checkpoint_every = args.checkpoint_every
        config.precision = args.precision
        config.validate()
        from tympan.models import UnknownArchitectureError, build_model

        try:  # fail before featurising anything
            build_model(config.arch, n_classes=2, **config.arch_params)
        except UnknownArchitectureError as exc:
            raise TrainingConfigError(str(exc)) from None
        except TypeError as exc:
            raise TrainingConfigError(f"bad --arch-param for {config.arch!r}: {exc}") from None
        if config.init:
            pretrained_spec(config.arch)  # --init for an arch without pretrained weights
            _fetch_init(config.init, quiet=args.quiet)  # download/convert now, not after featurising
        holdout_text = args.folds or (None if args.cv else "5")
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config.arch)
        data_dir = args.data_dir
    features, info = featureset_for(data_dir, frontend, progress=not args.quiet)
    if config.init:
        check_bundle_init(config.init, frontend, list(features.classes))
    holdout = parse_folds(holdout_text, sorted({int(f) for f in features.folds}))
    on_fold_end = None
    if args.records:
        holdout, on_fold_end = _with_records(Path(args.records), config, features.frontend, info, holdout)
        if not holdout:
            print(f"every requested fold is already in {args.records} for this configuration; nothing to train")
            return 0
    extra = None
    if config.field_augment:
        from tympan.training.field_augment import augmented_feature_copies
        from tympan.datasets import load_esc50

        extra = augmented_feature_copies(load_esc50(data_dir), frontend, config.field_augment,
                                         seed=config.seed, p=config.field_augment_p, progress=not args.quiet)
    print(f"run dir: {run_dir}")
    from tympan.training.loop import config_precision, resolve_device

    params = "".join(f" {k}={v}" for k, v in (config.arch_params or {}).items())
    device = resolve_device(config.device)
    device_text = f"{device} ({config.device})" if config.device in ("auto", "") else str(device)
    print(f"recipe {config.recipe}, arch {config.arch}{params}, front end {frontend.name}, "
          f"held-out folds {holdout}, "
          f"{config.epochs} epochs, batch {config.batch_size}, lr {config.lr}, device {device_text}, "
          f"precision {config_precision(config, device)}")
    results = run_cv(features, config, holdout, run_dir, data_info=info, progress=not args.quiet,
                     max_folds=args.max_folds, extra=extra, on_fold_end=on_fold_end)
    acc = results["accuracy"]
    for fold, r in results["folds"].items():
        print(f"fold {fold}: {r['accuracy']:.4f} ({r['seconds_per_epoch']:.1f} s/epoch, {r['seconds']:.0f} s)")
    if acc["n_folds"]:
        print(f"mean accuracy {acc['mean']:.4f} +- {acc['std']:.4f} over {acc['n_folds']} fold(s)")
    print(f"results: {run_dir / 'results.json'}")
    if args.out:
        out = bundle_from_run(run_dir, args.out, fold=args.bundle_fold)
        print(f"bundle: {out}")
    return 0


def _with_records(path: Path, config: TrainConfig, frontend: FrontendConfig, info: dict[str, Any],
                  holdout: list[int]) -> tuple[list[int], Any]:
    """The folds of ``holdout`` not yet in the records file for this config, and a callback that
    records each fold as it finishes."""
    from tympan.training.cv import code_version
    from tympan.training.loop import config_precision, resolve_device
    from tympan.training.records import append_record, config_hash, hashed_config, load_records, missing_folds, record_of

    precision = config_precision(config, resolve_device(config.device))
    hashed = hashed_config(config, frontend, info.get("fingerprint"), precision)
    chash = config_hash(hashed)
    todo = missing_folds(load_records(path), chash, holdout)
    skipped = [f for f in holdout if f not in todo]
    print(f"config hash {chash}: " + (f"folds {skipped} already recorded in {path}, skipped; " if skipped else "")
          + f"training {todo or 'nothing'}")

    def on_fold_end(result: Any) -> None:
        append_record(path, record_of(result, config, hashed, code_version()))
        print(f"fold {result.fold}: recorded in {path}")

    return todo, on_fold_end


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tympan.bundle import load_bundle
    from tympan.training.evaluate import evaluate

    bundle = load_bundle(args.bundle)
    folds = None
    if args.folds:
        try:
            folds = sorted({int(t) for t in args.folds.split(",") if t.strip()})
        except ValueError:
            raise TrainingConfigError(f"--folds {args.folds!r}: expected comma-separated fold numbers") from None
    res = evaluate(bundle, args.data_dir, folds, batch_size=args.batch_size, progress=not args.quiet)
    print(f"{bundle.name}: accuracy {res['accuracy']:.4f} on {res['n']} clips (folds {res['folds']})")
    if args.json:
        print(json.dumps({"accuracy": res["accuracy"], "n": res["n"], "folds": res["folds"]}))
    return 0


def _arch_defaults(name: str) -> str:
    """``cnn 30, mn04 30 (80 with --init)``-style text of a training default per architecture."""
    from tympan.models.registry import available_models, get_spec

    parts = []
    for arch in available_models():
        spec = get_spec(arch)
        plain = spec.training_defaults(pretrained=False).get(name)
        text = f"{arch} {plain:g}" if isinstance(plain, int | float) else f"{arch} {plain}"
        if spec.pretrained is not None:
            init = spec.training_defaults(pretrained=True).get(name)
            if init != plain:
                text += f" ({init:g} with --init)"
        parts.append(text)
    return ", ".join(parts)


def register(subparsers: argparse._SubParsersAction) -> None:
    from tympan.cli import run

    p = subparsers.add_parser("train", help="train on ESC-50 log-mels with cross-validation",
                              description="Train with k-fold cross-validation on the official ESC-50 folds.",
                              formatter_class=_HelpFormatter)
    p.add_argument("--data-dir", help="ESC-50-layout folder (default: $TYMPAN_ESC50_DIR)")
    p.add_argument("--arch", default="cnn", help="architecture name (cnn, resnet18, mn04, ...)")
    p.add_argument("--arch-param", action="append", metavar="K=V", help="architecture parameter (repeatable)")
    p.add_argument("--frontend", help="default | efficientat | FILE.json (default: the architecture's; efficientat for mn04)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default: the architecture's; {_arch_defaults('epochs')})")
    p.add_argument("--batch-size", type=int,
                   help=f"batch size (default: the architecture's; {_arch_defaults('batch_size')})")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule "
                                            f"(default: the architecture's; {_arch_defaults('lr')})")
    p.add_argument("--mixup", type=float, default=0.3, help="Mixup alpha (0 disables)")
    p.add_argument("--folds", help="held-out folds, e.g. 1,2 (default: 5; with --cv: which of the five to run)")
    p.add_argument("--cv", action="store_true", help="hold out each of the five folds in turn")
    p.add_argument("--init", help="pretrained weights for mn04: a bundle folder (continue training its model), "
                   "mn04_as (downloaded once), a URL, a .pt or "
                                  f".safetensors (offline: a local file, e.g. {LOCAL_WEIGHTS_HINT})")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (augmentation, init, order)")
    p.add_argument("--field-augment", type=int, default=0, metavar="N",
                   help="mix N field-like corrupted copies of each training clip into training "
                        "(noise, gain, EQ/band-limiting, codecs, reverb; see tympan.corruptions)")
    p.add_argument("--field-augment-p", type=float, default=0.5, help="probability of each corruption")
    p.add_argument("--field-mel", action="append", metavar="K=V",
                   help="override the recipe's log-mel field augmentation (repeatable), e.g. p_noise=0.7 "
                        "snr_db=[-5,20]; fields of tympan.training.field_augment.MelFieldConfig")
    p.add_argument("--recipe", default="robust", choices=["baseline", "robust", "efficientat", "efficientat-robust"],
                   help="robust (default): + on-the-fly log-mel field augmentation; baseline: the recipe "
                        "without it (the earlier shipped model's); efficientat: EfficientAT's published "
                        "ESC-50 fine-tuning (Adam 6e-5, 80 epochs, batch 128, waveform mixing)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="training-step arithmetic: auto = bfloat16 autocast where native (CUDA; CPUs with "
                        "AVX512-BF16/AMX), else fp32")
    p.add_argument("--records", metavar="FILE",
                   help="fold records (JSON): each finished fold is appended; folds already recorded with "
                        "the same config hash are skipped (e.g. benchmarks/results/folds.json)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="write the resumable checkpoint every N epochs (default 1; written in the background)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--run-dir", help="where logs, checkpoints and results go (default runs/<time>-<arch>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--max-folds", type=int, help="stop after training this many folds (resume later)")
    p.add_argument("--out", metavar="BUNDLE_DIR", help="write a bundle from a completed fold")
    p.add_argument("--bundle-fold", type=int, help="which fold's model --out bundles (default: the last)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda a: run(cmd_train, a))

    e = subparsers.add_parser("evaluate", help="accuracy of a bundle on ESC-50-layout clips",
                              description="Decode -> log-mel -> model, exactly as serving does, and print accuracy.")
    e.add_argument("--bundle", required=True, help="model bundle directory")
    e.add_argument("--data-dir", help="ESC-50-layout folder (default: $TYMPAN_ESC50_DIR)")
    e.add_argument("--folds", help="folds to evaluate on, e.g. 5 (default: all)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", action="store_true", help="also print a JSON line")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=lambda a: run(cmd_evaluate, a))

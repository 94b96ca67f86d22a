"""``tympan data ...``: fetch, verify, inspect and featurise data sets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tympan.errors import AudioError, TympanError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="download, verify, inspect and featurise audio data")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser("esc50", help="download the official ESC-50 release and verify it")
    p.add_argument("--dest", required=True, type=Path, help="folder to download into")
    p.add_argument("--url", default=None, help="archive URL (default: the official GitHub release)")
    p.set_defaults(func=cmd_esc50)

    p = dsub.add_parser("verify", help="check an ESC-50 copy: layout, counts, every file decodes")
    p.add_argument("data_dir", nargs="?", type=Path, help="ESC-50 folder (default: $TYMPAN_ESC50_DIR)")
    p.add_argument("--no-decode", action="store_true", help="check layout and counts only")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)

    p = dsub.add_parser("inspect", help="decode audio files and print what they hold, or why not")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--bundle", type=Path, default=None,
                   help="the model whose band is reported (default: $TYMPAN_BUNDLE, else the shipped one)")
    p.set_defaults(func=cmd_inspect)

    p = dsub.add_parser("featurize", help="compute (or find) the cached log-mels of a data set")
    p.add_argument("--data-dir", type=Path, default=None, help="ESC-50 folder (default: $TYMPAN_ESC50_DIR)")
    p.add_argument("--frontend", default="default",
                   help="front end: 'default', 'efficientat', or a JSON file of FrontendConfig fields")
    p.add_argument("--folds", default=None, help="comma-separated folds (default: all)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $TYMPAN_CACHE_DIR)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.set_defaults(func=cmd_featurize)

    p = dsub.add_parser("ood", help="build the out-of-distribution set (speech, music, UI sounds, noise)")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_ood)

    p = dsub.add_parser("synthetic", help="write the small generated data set (ESC-50 layout)")
    p.add_argument("--dest", required=True, type=Path)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synthetic)


def parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--folds must be comma-separated integers, got {text!r}") from None


def cmd_esc50(args: argparse.Namespace) -> int:
    from tympan.datasets.esc50 import ESC50_URL, download_esc50

    root = download_esc50(args.dest, args.url or ESC50_URL)
    print(f"downloaded to {root}; verifying")
    args.data_dir, args.no_decode, args.json = root, False, False
    return cmd_verify(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from tympan.datasets.esc50 import verify_esc50

    report = verify_esc50(args.data_dir, decode=not args.no_decode, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps({
            "root": str(report.root), "ok": report.ok, "n_clips": report.n_clips,
            "n_classes": report.n_classes, "folds": report.fold_counts,
            "sample_rates": report.sample_rates, "problems": report.problems,
            "decode_errors": report.decode_errors,
        }, indent=2))
    else:
        folds = ", ".join(f"{k}: {v}" for k, v in report.fold_counts.items())
        per_class = sorted(set(report.class_counts.values()))
        print(f"{report.root}")
        print(f"  clips    {report.n_clips}")
        print(f"  classes  {report.n_classes} ({'/'.join(map(str, per_class))} clips each)")
        print(f"  folds    {folds}")
        if report.sample_rates:
            rates = ", ".join(f"{sr} Hz: {n}" for sr, n in report.sample_rates.items())
            print(f"  decoded  {sum(report.sample_rates.values())} files ({rates})")
        for problem in report.problems:
            print(f"  problem: {problem}")
        for err in report.decode_errors[:20]:
            print(f"  decode error: {err}")
        if len(report.decode_errors) > 20:
            print(f"  ... and {len(report.decode_errors) - 20} more decode errors")
        print("OK" if report.ok else "FAILED")
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    """One line per file (greppable): what it holds, then its metadata and warnings, or why not."""
    from tympan.audio import load_audio
    from tympan.bundle import read_metadata, resolve_bundle_dir
    from tympan.recording_meta import MODEL_BAND_HZ, read_recording_metadata, recording_statistics

    try:  # the band of the model that will hear these files (the shipped one reaches 15 kHz, not 8)
        meta_b = read_metadata(resolve_bundle_dir(args.bundle))
        band_hz = float((meta_b.get("frontend") or {}).get("f_max") or MODEL_BAND_HZ)
        model_name = str(meta_b.get("name", "the model"))
    except TympanError:
        if args.bundle is not None:
            raise
        band_hz, model_name = MODEL_BAND_HZ, "a 16 kHz model"

    sources = {"guano": "GUANO Timestamp", "audiomoth_comment": "the AudioMoth comment",
               "bext": "BWF bext OriginationDate/Time", "filename": "the file name"}
    status = 0
    for path in args.files:
        try:
            meta = read_recording_metadata(path)
        except FileNotFoundError:
            meta = None
        lying = [f"warning: {meta.extension_warning}"] if meta is not None and meta.extension_warning else []
        try:
            d = load_audio(path, None, salvage=True)
        except (AudioError, FileNotFoundError) as exc:
            print("; ".join([f"{path}: error: {exc.__class__.__name__}: {exc}", *lying]))
            status = 2
            continue
        peak = float(abs(d.waveform).max()) if d.waveform.size else 0.0
        parts = [f"{path}: {d.format}/{d.subtype}, {d.source_sample_rate} Hz, {d.source_channels} ch, "
                 f"{d.source_duration:.3f} s, peak {peak:.3f}"]
        parts += [f"warning: {note}" for note in d.warnings] + lying
        if meta is not None and meta.start_time is not None:
            zone = "" if meta.start_time.tzinfo else ", no time zone given"
            source = sources.get(meta.start_time_source or "", meta.start_time_source)
            parts.append(f"start time {meta.start_time.isoformat()} (from {source}{zone})")
        else:
            parts.append("start time unknown")
        stats = recording_statistics(d.waveform, d.sample_rate, band_hz=band_hz)
        parts.append(f"clipping {100 * stats.clipping_share:.2f}% of samples at |x| >= 0.999")
        band = f"content above the band of {model_name} (0-{band_hz / 1000:g} kHz)"
        parts.append(f"{band}: none, a {d.sample_rate} Hz file holds nothing above {d.sample_rate / 2000:g} kHz"
                     if stats.share_above_band is None
                     else f"{band}: {100 * stats.share_above_band:.1f}% of spectral energy")
        if meta is not None:
            for label, fields in (("GUANO", meta.guano), ("INFO", meta.info), ("bext", meta.bext)):
                shown = {k: v for k, v in fields.items() if v}
                if shown:
                    parts.append(f"{label} " + json.dumps(shown, ensure_ascii=False))
        print("; ".join(parts))
    return status


def cmd_featurize(args: argparse.Namespace) -> int:
    from tympan.cache import featurize
    from tympan.datasets.esc50 import load_esc50

    from tympan.features import FrontendConfig

    frontend = FrontendConfig.from_spec(args.frontend)
    dataset = load_esc50(args.data_dir, folds=parse_folds(args.folds))
    fs = featurize(dataset, frontend, root=args.cache_dir, dtype=args.dtype, progress=True)
    size_mb = fs.info["bytes"] / 1e6
    print(f"{len(fs)} clips -> {fs.path}")
    print(f"  shape {tuple(fs.features.shape)} {fs.info['dtype']}, {size_mb:.1f} MB, "
          f"computed in {fs.info['seconds']:.1f} s (front end '{frontend.name}')")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from tympan.datasets.synthetic import make_synthetic

    root = make_synthetic(args.dest, n_classes=args.classes, clips_per_class=args.clips_per_class, seed=args.seed)
    print(f"wrote synthetic data set to {root}")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    from tympan.datasets.ood import build_ood_set

    report_ood_set(build_ood_set(args.dest, seed=args.seed))
    return 0


def report_ood_set(root: Path) -> None:
    """What the set holds per split, and (on stderr) every source this machine lacks and its package."""
    import csv
    from collections import Counter

    from tympan.datasets.ood import missing_sources

    with open(root / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kinds = Counter(r["kind"] for r in rows)
    print(f"wrote {len(rows)} clips to {root}: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    by_split = {sp: Counter(r["kind"] for r in rows if r["split"] == sp) for sp in ("dev", "eval")}
    print("  " + "; ".join(f"{sp}: " + (", ".join(f"{k} {n}" for k, n in sorted(c.items())) or "nothing")
                           for sp, c in by_split.items()))
    missing = missing_sources()
    if missing:  # said loudly: a smaller set changes every figure fitted or judged on it
        print(f"warning: a smaller set than the README describes: this machine lacks {len(missing)} of its sources:",
              file=sys.stderr)
        for what, split, pkg in missing:
            print(f"  {what} ({split} split): Debian package {pkg}", file=sys.stderr)
        pkgs = " ".join(dict.fromkeys(p for _, _, p in missing))
        print(f"  install them (`sudo apt-get install {pkgs}`, or run scripts/build_ood_set.sh as root) "
              "and build the set again", file=sys.stderr)

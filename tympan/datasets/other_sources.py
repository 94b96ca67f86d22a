"""A development set of real recordings from sources other than Freesound (issue #20 item 6).

ESC-50 is cut from one source (Freesound): a model and its trust layer tuned on it may fail on
recordings made elsewhere. This set is built from audio shipped in Debian packages (game data,
music, spoken letters and dialogue) of two kinds:

- ``esc-class``: recordings of an ESC-50 class, labelled by a conservative table of file names
  (:data:`RULES`: only names that leave no doubt; anything else that sounds like an ESC-50 class
  is left out altogether, never counted as an outlier, see :data:`ESC_HINT`);
- ``music``, ``sfx`` (game sound effects that are no ESC-50 class) and ``speech``.

Packages the project's evaluators reserve (:data:`RESERVED`) are refused, packages the OOD set
(:mod:`tympan.datasets.ood`) is built from are refused (this set is for sources it never saw), and a
package whose copyright / credits / readme mentions Freesound is skipped (:func:`freesound_credit`).
``scripts/build_other_sources.sh DEST`` downloads the packages (``apt-get download``, no root),
unpacks each with ``dpkg -x`` into ``ROOT/PACKAGE/`` and calls :func:`build_other_sources`. Every
clip is 5 s of 16 kHz mono FLAC, listed in ``manifest.csv`` (file, kind, label, package,
original_path, split; split is always ``dev``: this is development material only), the packages
skipped and why in ``skipped.csv``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tympan.audio import fit_length, load_audio
from tympan.errors import AudioError
from tympan.io import atomic_dir

#: never installed, downloaded or read: held out by the project's evaluators (issue #20 item 6)
RESERVED: frozenset[str] = frozenset({
    "freecol", "frozen-bubble-data", "hedgewars-data", "lincity-ng-data", "lomiri-sounds", "megaglest-data",
    "scorched3d-data", "simutrans-pak64", "tuxpaint-data", "tuxpaint-stamps-default", "ufoai-sound",
    "wesnoth-1.16-data", "asterisk-core-sounds-en-wav", "deepin-sound-theme", "extremetuxracer-data",
    "ktuberling-data", "pocketsphinx-testdata", "psi-plus-sounds", "warzone2100-data", "xmoto-data"})
#: other encodings of a reserved package's recordings (the same voice): refused with it
RESERVED_PREFIXES: tuple[str, ...] = ("asterisk-core-sounds-en",)
#: the OOD set's packages (scripts/ood-packages.txt): this set is for sources it never saw
OOD_SET_PACKAGES: frozenset[str] = frozenset({
    "espeak-ng", "fluidsynth", "timgm6mb-soundfont", "fluidr3mono-gm-soundfont", "musescore-general-soundfont-small",
    "sound-theme-freedesktop", "gnome-audio", "oxygen-sounds", "yaru-theme-sound"})

#: Freesound material that never says "freesound": refused like the reserved packages
FREESOUND_DERIVED: dict[str, str] = {
    "openttd-opensfx": "its opensfx.cat names each sound's original upload and Freesound user (dobroide, InspectorJ, ...)",
    "sonic-pi-samples": "its copyright credits Freesound",
}
#: looked at and not used, and why (the build script never downloads them)
NOT_USED: dict[str, str] = {
    **FREESOUND_DERIVED,
    "openclonk-data": "its sounds are inside .ocg containers (112 MB for 8 music files)",
    "teeworlds-data": "WavPack (.wv) sounds, which libsndfile does not read",
    "neverball-data": "no audio (it is in neverball-common)",
    "planetblupi-common": "numbered sound files (sound000.wav ...): no name to label or to rule out an ESC-50 class",
    "kobodeluxe-data": "no audio files (generated at run time)",
    "0ad-data-common": "no audio", "berusky-data": "no audio",
    "knights": "chess-piece knocks: too close to door_wood_knock to be outliers, too unclear to be labelled",
    "supertux-data": "size (162 MB)", "supertuxkart-data": "size (628 MB)", "widelands-data": "size (381 MB)",
    "freedroidrpg-data": "size (228 MB)",
}

#: package -> kind of its files that no rule names (None: only the files a rule names are used)
PACKAGES: dict[str, str | None] = {
    "lugaru-data": "sfx", "minetest-data": "sfx", "bucklespring-data": None, "heroes-sound-effects": "sfx",
    "sound-icons": "sfx", "tuxmath-data": "sfx", "tuxtype-data": "sfx", "lbreakout2-data": "sfx",
    "pingus-data": "sfx", "alienblaster-data": "sfx", "bzflag-data": "sfx", "caveexpress-data": "sfx",
    "chromium-bsu-data": "sfx", "holotz-castle-data": "sfx", "kapman": "sfx", "khangman": "sfx",
    "parsec47-data": "sfx", "pinball-data": "sfx", "powermanga-data": "sfx", "pychess": "sfx", "ri-li-data": "sfx",
    "rrootage-data": "sfx", "solarwolf": "sfx", "tecnoballz-data": "sfx", "torus-trooper-data": "sfx",
    "tumiki-fighters-data": "sfx", "moon-lander-data": "sfx",
    "asterisk-moh-opsound-wav": "music", "fretsonfire-songs-sectoid": None, "lmms-common": None,
    "klettres-data": "speech", "fillets-ng-data-nl": "speech", "neverball-common": "sfx",
    "supercollider-common": None, "puredata-doc": None,
    # checked and skipped by the builder itself: its copyright credits Freesound
    "gcompris-qt-data": "sfx",
}

KINDS = ("esc-class", "music", "sfx", "speech")
#: the 50 ESC-50 classes (the dataset's category names): every label of :data:`RULES` is one of them
ESC50_CLASSES: tuple[str, ...] = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow", "rain", "sea_waves",
    "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water", "toilet_flush",
    "thunderstorm", "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing",
    "door_wood_creaks", "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw")


@dataclass(frozen=True)
class Rule:
    """Files of ``package`` whose path (below the package root) matches ``pattern`` are ``kind``
    (``skip``: left out); ``label`` is the ESC-50 class of an ``esc-class`` file. ``assemble``: the
    matching files are single events (one step, one key) laid one after another into 5-s clips, one
    clip per value of the pattern's first group."""

    package: str
    pattern: str
    kind: str
    label: str = ""
    #: time from one event's onset to the next, seconds (low, high): about 2 steps a second when
    #: walking, 5-10 key presses and releases a second when typing (recordings may overlap)
    assemble: tuple[float, float] | None = None
    n_assembled: int = 2  # clips assembled per group


#: the first rule of a package that matches a file decides; only clear names are labelled
RULES: list[Rule] = [
    Rule("lugaru-data", r"/Bark\d*\.ogg$", "esc-class", "dog"),
    Rule("lugaru-data", r"/Wind\.ogg$", "esc-class", "wind"),
    Rule("lugaru-data", r"/Fire\.ogg$", "esc-class", "crackling_fire"),
    Rule("lugaru-data", r"/FootStep([A-Za-z]+)\d\.ogg$", "esc-class", "footsteps", assemble=(0.45, 0.65)),
    Rule("lugaru-data", r"/Music[^/]*\.ogg$", "music"),
    Rule("minetest-data", r"/fire_(?:fire\.\d|large|small)\.ogg$", "esc-class", "crackling_fire"),
    Rule("minetest-data", r"/default_break_glass\.\d\.ogg$", "esc-class", "glass_breaking"),
    Rule("minetest-data", r"/default_((?!water)[a-z]+)_footstep(?:\.\d)?\.ogg$", "esc-class", "footsteps",
         assemble=(0.45, 0.65)),
    Rule("bucklespring-data", r"/buckle/wav/()[0-9a-f]+-[01]\.wav$", "esc-class", "keyboard_typing",
         assemble=(0.08, 0.2), n_assembled=10),
    Rule("sound-icons", r"/canary-long\.wav$", "esc-class", "chirping_birds"),
    Rule("sound-icons", r"/(?:gummy-cat|cockchafer|glass-water)", "skip"),
    Rule("heroes-sound-effects", r"/claxon\.wav$", "esc-class", "car_horn"),
    Rule("tuxmath-data", r"/(?:\d\d_[a-z_]+|tuxi)\.ogg$", "music"),
    Rule("tuxtype-data", r"/(?:amidst_the_raindrops|chiptune2|tuxi)\.ogg$", "music"),
    Rule("tuxtype-data", r"/excuseme\.wav$", "speech"),
    Rule("lbreakout2-data", r"/(?:excellent|verygood|damn|dammit|wontgiveup)\.wav$", "speech"),
    Rule("pingus-data", r"/(?:letsgo|ohno|yipee|goodidea)\.wav$", "speech"),
    Rule("heroes-sound-effects", r"/(?:ho_yeh|oh|no|go)\.wav$", "speech"),
    Rule("chromium-bsu-data", r"/music_[a-z]+\.wav$", "music"),
    Rule("holotz-castle-data", r"/HC(?:MainTitle|Credits|GameOver)[^/]*\.wav$", "music"),
    Rule("parsec47-data", r"/ptn\d\.ogg$", "music"),
    Rule("rrootage-data", r"/stg_[a-z]\.ogg$", "music"),
    Rule("torus-trooper-data", r"/musics/[^/]+\.ogg$", "music"),
    Rule("tumiki-fighters-data", r"/[a-z_]+\.ogg$", "music"),
    Rule("powermanga-data", r"/music_[a-z]+\.ogg$", "music"),
    Rule("solarwolf", r"/music/[^/]+\.ogg$", "music"),
    Rule("pinball-data", r"\.ogg$", "music"),
    Rule("caveexpress-data", r"/music-[^/]+\.ogg$", "music"),
    Rule("fretsonfire-songs-sectoid", r"/song\.ogg$", "music"),
    Rule("lmms-common", r"/samples/(?:bassloops|beats)/[^/]+\.(?:ogg|wav)$", "music"),
    Rule("khangman", r"\.wav$", "skip"),  # the same sounds as its .ogg files
    Rule("neverball-common", r"/bgm/[^/]+\.ogg$", "music"),
    Rule("neverball-common", r"/snd/(?:gd/)?(?:goal|set|one|record|player\d|success|fall|par|ready|eagle|bogey|"
                             r"birdie|double|time|go|over|penalty)\.ogg$", "speech"),  # the announcer's words
    Rule("supercollider-common", r"/a11wlk01\.wav$", "speech"),  # Apollo 11 radio
    Rule("puredata-doc", r"/voice2?\.wav$", "speech"),
]

#: words in a file name that hint at an ESC-50 class: such a file, unless a rule labels it, is left
#: out (it may well BE an ESC-50 sound, so it can be neither a labelled clip nor an outlier)
ESC_HINT = re.compile(
    r"water|rain|drip|drop|pour|splash|splat|toilet|flush|sea|wave|thunder|storm|wind|fire|burn|sizzl|"
    r"door|knock|creak|wood|clock|tick|tock|alarm|claxon|klaxon|honk|horn|bell|siren|engine|motor|jet|plane|heli|"
    r"train|wagon|cart|car\b|glass|foot|step|walk|run\b|bird|canary|hawk|crow|rooster|hen\b|chick|dog|bark|growl|"
    r"snarl|wolf|cat\b|meow|cow|pig|sheep|frog|insect|bee\b|fly|cricket|baby|cry|sneez|cough|laugh|breath|snor|"
    r"clap|cheer|crowd|foule|click|key|typ|saw|chain|vacuum|wash|brush|drink|sip|can\b|firework|chew|bite|"
    r"rustle|bush|ambient|lava|geyser|mammut|rabbit|animal|chitter|furnace|sleep|buzz", re.IGNORECASE)

AUDIO_SUFFIXES = {".wav", ".ogg", ".oga", ".flac", ".aiff", ".aif"}
#: credits / licence files scanned for a Freesound credit, anywhere in a package's tree
CREDIT_NAMES = re.compile(r"copyright|credit|readme|author|artist|licen[cs]e|thanks|attribution|notice|sources",
                          re.IGNORECASE)
TEXT_SUFFIXES = {".txt", ".md", ".html", ".htm", ".rst", ".json", ".xml", ".ini", ".cfg", ".gz", ""}


def is_reserved(package: str) -> bool:
    return package in RESERVED or package.startswith(RESERVED_PREFIXES)


def check_packages(packages: Sequence[str]) -> None:
    """Refuse reserved packages and the OOD set's packages (raises ``ValueError``)."""
    reserved = sorted(p for p in packages if is_reserved(p))
    if reserved:
        raise ValueError(f"reserved for evaluation, never read: {', '.join(reserved)}")
    derived = sorted(set(packages) & set(FREESOUND_DERIVED))
    if derived:
        raise ValueError(f"Freesound material: {', '.join(f'{p} ({FREESOUND_DERIVED[p]})' for p in derived)}")
    seen = sorted(set(packages) & OOD_SET_PACKAGES)
    if seen:
        raise ValueError(f"already a source of the OOD set (this set is for unseen sources): {', '.join(seen)}")


def _text(path: Path) -> str:
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""
    return data.decode("utf-8", "replace")


def freesound_credit(package_root: str | Path) -> Path | None:
    """The first file of an unpacked package that mentions Freesound, else None: every file under
    ``usr/share/doc``, credits-like files (copyright, credits, readme, artists, ...) and small text
    files anywhere, then the tags of every audio file (the first 64 KiB, where Vorbis comments and
    RIFF INFO lie)."""
    root = Path(package_root)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    for p in files:
        if p.suffix.lower() not in AUDIO_SUFFIXES and (
                "doc" in p.relative_to(root).parts[:3] or CREDIT_NAMES.search(p.name)
                or (p.suffix.lower() in TEXT_SUFFIXES and p.stat().st_size < 1_000_000)):
            if "freesound" in _text(p).lower():
                return p
    for p in files:
        if p.suffix.lower() in AUDIO_SUFFIXES:
            with open(p, "rb") as f:
                if b"freesound" in f.read(65_536).lower():
                    return p
    return None


def classify(package: str, relpath: str) -> tuple[str, str, Rule | None] | None:
    """``(kind, label, rule)`` of one file of ``package``, or None when it is left out."""
    for rule in RULES:
        if rule.package == package and re.search(rule.pattern, "/" + relpath):
            return None if rule.kind == "skip" else (rule.kind, rule.label, rule)
    default = PACKAGES.get(package)
    if default is None or (default == "sfx" and ESC_HINT.search(Path(relpath).stem.replace("_", " ").replace("-", " "))):
        return None
    return default, "", None


def _clips(y: np.ndarray, n: int, max_clips: int) -> list[np.ndarray]:
    """Up to ``max_clips`` 5-s windows spread over a recording (a shorter one: the whole, padded);
    near-silent windows are dropped."""
    if len(y) <= n:
        starts = [0]
    else:
        last = len(y) - n
        starts = sorted({int(s) for s in np.linspace(0, last, min(max_clips, last // n + 1))})
    out = [fit_length(y[s:s + n], n) for s in starts]
    return [c for c in out if np.abs(c).max() >= 1e-3]


def _assemble(waves: list[np.ndarray], n: int, sr: int, onsets: tuple[float, float], rng: np.random.Generator,
              n_clips: int) -> list[np.ndarray]:
    """Single recorded events (one footstep, one key) one after another into ``n_clips`` clips."""
    out = []
    for _ in range(n_clips):
        clip, t = np.zeros(n, np.float32), int(rng.uniform(0.05, 0.3) * sr)
        while t < n:
            w = waves[int(rng.integers(len(waves)))][: n - t]
            clip[t:t + len(w)] += w
            t += int(rng.uniform(*onsets) * sr)
        peak = np.abs(clip).max()
        out.append(clip / peak * 0.9 if peak > 1 else clip)
    return out


def _spread(items: list, cap: int | None) -> list:
    """At most ``cap`` items spread evenly over the (sorted) list, so that a large package (spoken
    letters of 20 languages) is sampled across, not cut at its first folder."""
    if cap is None or len(items) <= cap:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, cap)]


def build_other_sources(
    dest: str | Path, extracted: str | Path, *, packages: Sequence[str] | None = None, sample_rate: int = 16_000,
    seconds: float = 5.0, max_clips_per_file: int = 3, max_files_per_package: int | None = 40,
    seed: int = 0, log: Callable[[str], object] = print,
) -> Path:
    """Write the set to ``dest`` (atomically) from packages unpacked at ``extracted/PACKAGE/``.

    Packages that are missing there are skipped with a message; one whose credits mention
    Freesound is skipped with a message naming the file. ``max_files_per_package`` caps the files
    of each kind read from one package (labelled ESC-class files are never capped).
    """
    packages = list(PACKAGES) if packages is None else list(packages)
    check_packages(packages)
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    rows: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    with atomic_dir(dest) as tmp:
        for pkg in packages:
            root = Path(extracted) / pkg
            if not root.is_dir():
                log(f"other sources: {pkg} not unpacked at {root}, skipped")
                skipped.append({"package": pkg, "reason": "not unpacked"})
                continue
            credit = freesound_credit(root)
            if credit is not None:
                log(f"other sources: {pkg} skipped: {credit.relative_to(root)} credits Freesound")
                skipped.append({"package": pkg, "reason": f"/{credit.relative_to(root)} mentions Freesound"})
                continue
            files: dict[str, list[tuple[Path, str]]] = {}
            groups: dict[tuple[Rule, str], list[Path]] = {}
            for p in sorted(root.rglob("*")):
                if p.suffix.lower() not in AUDIO_SUFFIXES or not p.is_file():
                    continue
                rel = str(p.relative_to(root))
                got = classify(pkg, rel)
                if got is None:
                    continue
                kind, label, rule = got
                if rule is not None and rule.assemble is not None:
                    groups.setdefault((rule, re.search(rule.pattern, "/" + rel).group(1)), []).append(p)
                else:
                    files.setdefault(kind, []).append((p, label))
            (tmp / pkg).mkdir()
            for kind, items in files.items():
                for p, label in (items if kind == "esc-class" else _spread(items, max_files_per_package)):
                    try:
                        y = load_audio(p, sample_rate).waveform
                    except (AudioError, OSError, RuntimeError):
                        continue
                    for j, clip in enumerate(_clips(y, n, max_clips_per_file)):
                        name = f"{pkg}/{kind}-{len(rows):04d}-{j}.flac"
                        sf.write(tmp / name, clip, sample_rate, format="FLAC")
                        rows.append({"file": name, "kind": kind, "label": label, "package": pkg,
                                     "original_path": "/" + str(p.relative_to(root)), "split": "dev"})
            for (rule, group), paths in groups.items():
                waves = []
                for p in paths:
                    try:
                        waves.append(load_audio(p, sample_rate).waveform)
                    except (AudioError, OSError, RuntimeError):
                        continue
                if not waves:
                    continue
                for j, clip in enumerate(_assemble(waves, n, sample_rate, rule.assemble, rng, rule.n_assembled)):
                    name = f"{pkg}/{rule.kind}-{len(rows):04d}-{j}.flac"
                    sf.write(tmp / name, clip, sample_rate, format="FLAC")
                    common = "/" + str(Path(paths[0].relative_to(root)).parent)
                    rows.append({"file": name, "kind": rule.kind, "label": rule.label, "package": pkg,
                                 "original_path": f"assembled from {len(waves)} recordings in {common} ({group or 'all'})",
                                 "split": "dev"})
            if not any(r["package"] == pkg for r in rows):
                (tmp / pkg).rmdir()
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["file", "kind", "label", "package", "original_path", "split"])
            w.writeheader()
            w.writerows(rows)
        with open(tmp / "skipped.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["package", "reason"])
            w.writeheader()
            w.writerows(skipped)
    counts = {k: sum(r["kind"] == k for r in rows) for k in KINDS}
    log(f"other sources: {len(rows)} clips in {dest} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    return Path(dest)


def main(argv: list[str] | None = None) -> int:
    """``python -m tympan.datasets.other_sources DEST --extracted DIR`` (scripts/build_other_sources.sh)."""
    p = argparse.ArgumentParser(description="Build the other-sources development set from unpacked packages.")
    p.add_argument("dest", nargs="?")
    p.add_argument("--extracted", help="folder holding one `dpkg -x` tree per package")
    p.add_argument("--list-packages", action="store_true", help="print the packages to download and exit")
    args = p.parse_args(argv)
    if args.list_packages:
        print("\n".join(PACKAGES))
        return 0
    if not args.dest or not args.extracted:
        p.error("DEST and --extracted are required")
    build_other_sources(args.dest, args.extracted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

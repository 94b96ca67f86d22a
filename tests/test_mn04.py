"""EfficientAT mn04: architecture vs the official key list, converter, loader and downloader.

Tests marked ``weights`` use the real ``mn04_as`` checkpoint from ``$TYMPAN_WEIGHTS_DIR`` or
``<repo>/../shared/weights/efficientat-mn04_as`` and skip when it is absent.
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tympan.download import DownloadError
from tympan.models import build_model
from tympan.models.convert import (
    MN04_AS_SHA256,
    CheckpointMismatchError,
    convert_checkpoint,
    download_pretrained,
    load_pretrained,
    resolve_init,
)
from tympan.models.mn04 import MN04_HEAD_PREFIXES, mn04_param_groups

KEY_LIST = Path(__file__).parent / "data" / "mn04_state_dict_keys.txt"
REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = Path(
    os.environ.get("TYMPAN_WEIGHTS_DIR") or REPO.parent / "shared" / "weights" / "efficientat-mn04_as"
)
OFFICIAL_PT = WEIGHTS_DIR / "mn04_as_mAP_432.pt"
ESC50_DIR = Path(os.environ.get("TYMPAN_ESC50_DIR") or REPO.parent / "shared" / "data" / "esc50")

needs_weights = pytest.mark.skipif(not OFFICIAL_PT.is_file(), reason=f"no {OFFICIAL_PT}")


def _key_lines(state: dict[str, torch.Tensor]) -> list[str]:
    """Same format as state_dict_keys.txt: ``key (shape) dtype``."""
    return [f"{k} {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" for k, v in state.items()]


def _randomised(n_classes: int = 527, seed: int = 0) -> torch.nn.Module:
    """An mn04 whose every tensor (BN statistics included) is non-default, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("mn04", n_classes=n_classes)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                buf.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def saved_pt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A random model saved the way the official checkpoints are: ``torch.save(state_dict)``."""
    model = _randomised()
    path = tmp_path_factory.mktemp("ckpt") / "random_mn04.pt"
    torch.save(model.state_dict(), path)
    return path, model


# --------------------------------------------------------------------------- architecture


def test_state_dict_matches_official_key_list() -> None:
    model = build_model("mn04", n_classes=527)
    expected = KEY_LIST.read_text().splitlines()
    assert len(expected) == 312
    assert _key_lines(model.state_dict()) == expected


def test_protocol_embed_classify_stages_any_length() -> None:
    model = _randomised(n_classes=50)
    x = torch.randn(2, 1, 128, 137)  # an odd number of frames: the network pools globally
    with torch.no_grad():
        e = model.embed(x)
        logits = model(x)
    assert e.shape == (2, 384) and logits.shape == (2, 50)
    torch.testing.assert_close(logits, model.classify(e))
    modules = dict(model.named_modules())
    assert model.stages and all(s in modules for s in model.stages)


def test_param_groups_cover_every_parameter_with_rising_lr() -> None:
    model = build_model("mn04", n_classes=50)
    groups = mn04_param_groups(model, base_lr=1e-3, decay=0.5, weight_decay=1e-4)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("/no_decay"))
    torch.optim.AdamW(groups)  # the groups are accepted as they are


# --------------------------------------------------------------------------- converter


def test_convert_round_trip_is_exact(saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    src, model = saved_pt
    dst = tmp_path / "mn04.safetensors"
    summary = convert_checkpoint(src, dst)
    assert dst.is_file() and summary["tensors"] == 312 and summary["parameters"] == 983_599
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left over

    loaded = load_pretrained(build_model("mn04", n_classes=527), dst).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 1, 128, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_pretrained_can_skip_the_head(saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    src, model = saved_pt
    dst = tmp_path / "mn04.safetensors"
    convert_checkpoint(src, dst)
    fresh = build_model("mn04", n_classes=50)
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.5\.weight.*\(50, 512\).*\(527, 512\)"):
        load_pretrained(fresh, dst)
    load_pretrained(fresh, dst, skip_prefixes=MN04_HEAD_PREFIXES)
    assert torch.equal(fresh.state_dict()["classifier.2.weight"], model.state_dict()["classifier.2.weight"])
    assert fresh.state_dict()["classifier.5.weight"].shape == (50, 512)


def test_a_checkpoint_of_the_same_label_set_keeps_its_head(tmp_path: Path) -> None:
    """Fine-tuning a trained 50-class model further (``--init BUNDLE``) must not reset its head."""
    from safetensors.torch import save_file

    trained = build_model("mn04", n_classes=50)
    with torch.no_grad():
        trained.state_dict()["classifier.5.weight"].normal_()
    dst = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(dst))
    (tmp_path / "bundle.json").write_text("{}")
    assert resolve_init(tmp_path, cache_dir=tmp_path / "cache") == dst  # a bundle folder
    fresh = load_pretrained(build_model("mn04", n_classes=50), dst, skip_prefixes=MN04_HEAD_PREFIXES)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other = load_pretrained(build_model("mn04", n_classes=10), dst, skip_prefixes=MN04_HEAD_PREFIXES)
    assert other.state_dict()["classifier.5.weight"].shape == (10, 512)  # head does not fit: skipped


def test_missing_key_is_named(saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    state = torch.load(saved_pt[0], weights_only=True)
    del state["features.7.block.1.0.weight"]
    bad = tmp_path / "missing.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: features\.7\.block\.1\.0\.weight"):
        convert_checkpoint(bad, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_misshaped_and_unexpected_keys_are_named(
    saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    state = torch.load(saved_pt[0], weights_only=True)
    state["features.4.block.2.conc_se_layers.0.fc1.weight"] = torch.zeros(16, 32)
    state["extra.bias"] = torch.zeros(3)
    bad = tmp_path / "misshaped.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_checkpoint(bad, tmp_path / "out.safetensors")
    msg = str(info.value)
    assert "features.4.block.2.conc_se_layers.0.fc1.weight: expected shape (8, 32), found (16, 32)" in msg
    assert "unexpected keys: extra.bias" in msg


def test_resolve_init_converts_a_local_pt_once(
    saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    src, _ = saved_pt
    first = resolve_init(src, cache_dir=tmp_path)
    assert first.suffix == ".safetensors" and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert resolve_init(str(src), cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # cache hit, not a second conversion
    assert resolve_init(first, cache_dir=tmp_path) == first
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_init(tmp_path / "nope.pt", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        resolve_init("https://example.invalid/model.pt", cache_dir=tmp_path)


# --------------------------------------------------------------------------- download


class _Server:
    """A local HTTP server for one payload, honouring ``Range: bytes=N-`` unless told not to."""

    def __init__(self, payload: bytes, honour_range: bool = True) -> None:
        self.payload, self.honour_range = payload, honour_range
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                body, status = outer.payload, 200
                if rng and outer.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    body, status = outer.payload[start:], 206
                self.send_response(status)
                if status == 206:
                    n = len(outer.payload)
                    self.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/blob.pt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


PAYLOAD = bytes(range(256)) * 300  # 76.8 kB, several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server(PAYLOAD) as s:
        yield s


def test_download_resumes_from_a_partial_file(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "blob.pt.part").write_bytes(PAYLOAD[:10_000])
    path = download_pretrained(server.url, tmp_path, PAYLOAD_SHA, progress=False)
    assert path == tmp_path / "blob.pt" and path.read_bytes() == PAYLOAD
    assert server.ranges == ["bytes=10000-"]
    assert not (tmp_path / "blob.pt.part").exists()
    # cached: a second call makes no request
    assert download_pretrained(server.url, tmp_path, PAYLOAD_SHA, progress=False) == path
    assert len(server.ranges) == 1


def test_download_restarts_when_the_server_ignores_range(tmp_path: Path) -> None:
    (tmp_path / "blob.pt.part").write_bytes(b"garbage that must not be kept")
    with _Server(PAYLOAD, honour_range=False) as s:
        path = download_pretrained(s.url, tmp_path, PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_download_checksum_mismatch_raises_and_discards(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="sha256"):
        download_pretrained(server.url, tmp_path, "0" * 64, progress=False)
    assert not any(tmp_path.iterdir())


def test_download_from_file_url(tmp_path: Path) -> None:
    src = tmp_path / "src" / "blob.pt"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    path = download_pretrained(src.as_uri(), tmp_path / "cache", PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_resolve_init_downloads_and_converts_a_url(
    saved_pt: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    raw = saved_pt[0].read_bytes()
    with _Server(raw) as s:
        path = resolve_init(s.url, cache_dir=tmp_path, sha256=hashlib.sha256(raw).hexdigest(), progress=False)
    assert path.suffix == ".safetensors" and (tmp_path / "blob.pt").is_file()
    model = load_pretrained(build_model("mn04", n_classes=527), path)
    assert torch.equal(model.state_dict()["classifier.5.bias"], saved_pt[1].state_dict()["classifier.5.bias"])


# --------------------------------------------------------------------------- real weights


@pytest.mark.weights
@needs_weights
def test_official_checkpoint_converts_and_loads_strictly(tmp_path: Path) -> None:
    assert hashlib.sha256(OFFICIAL_PT.read_bytes()).hexdigest() == MN04_AS_SHA256
    dst = resolve_init(OFFICIAL_PT, cache_dir=tmp_path)
    model = load_pretrained(build_model("mn04", n_classes=527), dst)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 983_599
    official = torch.load(OFFICIAL_PT, map_location="cpu", weights_only=True)
    assert _key_lines(official) == KEY_LIST.read_text().splitlines()
    for key, value in official.items():
        assert torch.equal(model.state_dict()[key], value), key


def _dog_clips(n: int) -> list[Path]:
    audio = ESC50_DIR / "audio"
    if not audio.is_dir():
        return []
    return sorted(p for p in audio.glob("*-0.*") if p.suffix in (".wav", ".flac"))[:n]


@pytest.mark.weights
@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not _dog_clips(1), reason=f"no ESC-50 audio under {ESC50_DIR}")
def test_dog_clips_are_tagged_dog_or_bark(tmp_path: Path) -> None:
    from tympan.audio import load_audio
    from tympan.features import FrontendConfig, LogMel

    torch.set_num_threads(2)
    labels = [r["display_name"] for r in csv.DictReader(open(WEIGHTS_DIR / "class_labels_indices.csv"))]
    model = load_pretrained(build_model("mn04", n_classes=527), resolve_init(OFFICIAL_PT, cache_dir=tmp_path))
    model.eval()
    config = FrontendConfig.efficientat()
    frontend = LogMel(config)
    for clip in _dog_clips(4):
        wave = torch.from_numpy(load_audio(clip, config.sample_rate).waveform)
        with torch.no_grad():
            probs = torch.sigmoid(model(frontend(wave)))[0]
        top3 = [labels[i] for i in probs.topk(3).indices]
        assert {"Dog", "Bark"} & set(top3), f"{clip.name}: top-3 AudioSet tags {top3}"

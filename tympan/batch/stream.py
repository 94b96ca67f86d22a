"""A recording as a stream of model windows: blocks from the decoder in, batches of windows out.

:func:`iter_window_batches` cuts exactly the windows :func:`tympan.audio.frame_windows` cuts
from the whole waveform (starts ``0, hop, 2 hop, ...``, the last window aligned to the end, a
recording shorter than a window zero-padded), but holds at most one block plus one window of
samples, so memory does not grow with the recording's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from tympan.audio import fit_length


def default_hop(n_samples: int) -> int:
    """The model's window step: 50 % overlap (as :func:`tympan.audio.frame_windows`)."""
    return max(1, n_samples // 2)


def iter_window_batches(
    blocks: Iterable[np.ndarray], n_samples: int, hop: int | None = None, batch: int = 16
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(starts, windows)``: start samples ``(b,)`` and windows ``(b, n_samples)``, b <= batch."""
    hop = int(hop or default_hop(n_samples))
    if hop <= 0:
        raise ValueError("the window step must be positive")
    buf = np.zeros(0, np.float32)
    off = 0  # absolute index of buf[0]
    total = 0
    nxt = 0  # next regular window start
    last = -1  # last start emitted
    starts: list[int] = []
    wins: list[np.ndarray] = []

    def take() -> tuple[np.ndarray, np.ndarray]:
        out = (np.asarray(starts, np.int64), np.stack(wins))
        starts.clear()
        wins.clear()
        return out

    for block in blocks:
        b = np.asarray(block, np.float32)
        if not len(b):
            continue
        buf = b if not len(buf) else np.concatenate([buf, b])
        total += len(b)
        while nxt + n_samples <= total:
            starts.append(nxt)
            wins.append(buf[nxt - off : nxt - off + n_samples].copy())
            last = nxt
            nxt += hop
            if len(wins) >= batch:
                yield take()
        keep = max(off, min(nxt, total - n_samples))
        if keep > off:
            buf = buf[keep - off :]
            off = keep
    if total == 0:
        return
    if total <= n_samples:
        if last < 0:
            starts.append(0)
            wins.append(fit_length(buf[:total], n_samples))
    elif last + n_samples < total:
        s = total - n_samples
        starts.append(s)
        wins.append(buf[s - off : s - off + n_samples].copy())
    if wins:
        yield take()

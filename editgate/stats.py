"""Second-moment statistics of MLP keys, C = E[k kᵀ], over a generic text corpus.

ROME whitens its update with C⁻¹ and MEMIT/AlphaEdit weigh their least squares by C, so that an
edit disturbs the keys the model usually sees as little as possible. The original tools stream
100k Wikipedia samples (an 18 GB download, hours to days). Here the corpus is the ~3 MB of real
English text in ``<data>/corpus`` (WikiText-2 validation, held-out LAMBADA and BoolQ passages,
interleaved so any token budget mixes all three), packed into fixed windows, and the forward pass
stops at the deepest layer needed — several layers come out of one pass.

Results are cached per layer under a key of (model fingerprint, layer, corpus hash, token count,
window, dtype): a different corpus or budget is a different statistic, never a silently reused one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editgate.cache import cache_key, cache_path, file_lock, file_sha256
from editgate.data import Field, read_jsonl
from editgate.errors import DataError
from editgate.models import LoadedModel

STATS_VERSION = "1"
CORPUS_FILES = (
    "wikitext2_valid_tokens.jsonl",
    "lambada_test_heldout_2000_5152.jsonl",
    "boolq_dev_passages_heldout.jsonl",
)


def corpus_texts(data_dir: Path) -> tuple[list[str], str]:
    """Texts of the covariance corpus, round-robin over its files, and the corpus fingerprint."""
    folder = data_dir / "corpus"
    streams, hashes = [], []
    for name in CORPUS_FILES:
        path = folder / name
        records = read_jsonl(path, (Field("text", str),))
        streams.append([r["text"] for r in records if r["text"].strip()])
        hashes.append(file_sha256(path))
    if not any(streams):
        raise DataError("covariance corpus is empty", path=folder)
    texts = []
    for i in range(max(len(s) for s in streams)):
        texts.extend(s[i] for s in streams if i < len(s))
    return texts, cache_key(files=hashes)


def _windows(lm: LoadedModel, texts: Sequence[str], n_tokens: int, window: int) -> torch.Tensor:
    """Pack tokenised texts into [n, window] rows (BOS first where the model wants one)."""
    body = window - (1 if lm.prepend_bos else 0)
    rows, buffer = [], []
    for text in texts:
        buffer.extend(lm.encode(text + "\n"))
        while len(buffer) >= body:
            row = ([lm.tokenizer.bos_token_id] if lm.prepend_bos else []) + buffer[:body]
            rows.append(row)
            buffer = buffer[body:]
            if len(rows) * window >= n_tokens:
                return torch.tensor(rows)
    if not rows:
        raise DataError(f"corpus too small for one window of {window} tokens")
    return torch.tensor(rows)


def second_moments(lm: LoadedModel, layers: Sequence[int], data_dir: Path, *,
                   n_tokens: int = 100_000, window: int = 256, batch_rows: int = 8,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> dict[int, torch.Tensor]:
    """C_l = E[k kᵀ] (float64, [d_in, d_in]) for each layer, computed once and cached."""
    texts, corpus_hash = corpus_texts(data_dir)
    paths = {
        layer: cache_path("stats", cache_key(
            v=STATS_VERSION, model=lm.fingerprint, layer=layer, module=lm.layout.mlp_out,
            corpus=corpus_hash, tokens=n_tokens, window=window, dtype=str(lm.dtype)),
            ".safetensors")
        for layer in layers
    }
    result: dict[int, torch.Tensor] = {}
    missing = []
    for layer, path in paths.items():
        loaded = _load(path)
        if loaded is None:
            missing.append(layer)
        else:
            result[layer] = loaded
    if not missing:
        return result
    # One lock for the whole computation: parallel workers wait instead of duplicating it.
    with file_lock(paths[missing[0]]):
        still = [layer for layer in missing if _load(paths[layer]) is None]
        if still:
            computed = _compute(lm, still, _windows(lm, texts, n_tokens, window), batch_rows,
                                progress)
            for layer, moment in computed.items():
                _save(paths[layer], moment)
        for layer in missing:
            moment = _load(paths[layer])
            assert moment is not None
            result[layer] = moment
    return result


def _load(path: Path) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        moment = load_file(str(path))["moment"]
    except Exception:  # truncated or corrupted: recompute, never trust
        path.unlink(missing_ok=True)
        return None
    return moment if torch.isfinite(moment).all() else None


def _save(path: Path, moment: torch.Tensor) -> None:
    from editgate.cache import atomic_write

    atomic_write(path, lambda tmp: save_file({"moment": moment.contiguous()}, str(tmp)))


@torch.no_grad()
def _compute(lm: LoadedModel, layers: Sequence[int], rows: torch.Tensor, batch_rows: int,
             progress: Callable[[int, int], None] | None) -> dict[int, torch.Tensor]:
    from editgate.editors.base import StopForward, capture_mlp_io, stop_after

    deepest = max(layers)
    sums: dict[int, torch.Tensor] = {}
    count = 0
    start = time.perf_counter()
    for first in range(0, len(rows), batch_rows):
        ids = rows[first:first + batch_rows].to(lm.device)
        with capture_mlp_io(lm, layers) as records:
            try:
                with stop_after(lm, deepest):
                    lm.model(input_ids=ids)
            except StopForward:
                pass
        for layer in layers:
            keys = records[layer]["input"].reshape(-1, records[layer]["input"].shape[-1]).float()
            # float32 products summed per batch, accumulated in float64 across batches.
            product = (keys.T @ keys).double()
            sums[layer] = sums[layer] + product if layer in sums else product
        count += ids.numel()
        if progress is not None:
            progress(count, len(rows) * rows.shape[1])
    del start
    return {layer: (total / count).cpu() for layer, total in sums.items()}

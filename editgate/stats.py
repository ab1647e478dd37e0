"""Second-moment statistics of MLP keys, C = E[k kᵀ], over a generic text corpus.

ROME whitens its update with C⁻¹, MEMIT weighs its least squares by C and AlphaEdit projects onto
C's null space, so that an edit disturbs the keys the model usually sees as little as possible.
The original tools stream 100k Wikipedia samples (an 18 GB download, hours to days). Here the
corpus is the ~3 MB of real English text in ``<data>/corpus`` (WikiText-2 validation, held-out
LAMBADA and BoolQ passages, interleaved so any token budget mixes all three), packed into fixed
windows of ``window`` tokens.

Speed (SmolLM2, MEMIT's five layers, 100k tokens: ~55 s on one contended CPU core, was ~150 s
on two):

* one forward pass serves every requested layer and stops right after the deepest one;
* the forward pass runs under bfloat16 autocast (``autocast_bf16``; matmuls ~2.4× faster on
  CPUs). The keys then carry bf16 rounding; C moves by ~0.5 % (relative Frobenius norm) from a
  float32 pass, far inside the sampling variation of C itself (the C of one 50k-token half of
  the corpus differs from the other half's by ~30 %);
* the products kᵀk of those bf16 keys are bf16 matmuls (4× faster than float32 here), one per
  batch of ~2k tokens, summed in float32: their output rounding is unbiased and averages out over
  the batches, adding ~3·10⁻⁴ relative error (the smallest eigenvalues move by < 5·10⁻⁴ — what
  AlphaEdit's null-space threshold needs); the mean is formed in float64 at the end.
  ``tests/test_stats.py`` bounds both against a float32 computation.

Results are cached per layer under a key of (model fingerprint, layer, corpus hash, token count,
window, dtype, autocast): a different corpus, budget or precision is a different statistic,
never a silently reused one. Files appear atomically; one lock per (model, corpus, budget) makes
parallel workers wait for the first one instead of computing the same pass twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from editgate.cache import atomic_write, cache_key, cache_path, file_lock, file_sha256
from editgate.data import Field, read_jsonl
from editgate.errors import DataError
from editgate.fingerprint import compute_key
from editgate.models import LoadedModel

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
                   autocast_bf16: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> dict[int, torch.Tensor]:
    """C_l = E[k kᵀ] (float64, [d_in, d_in]) for each layer, computed once and cached."""
    texts, corpus_hash = corpus_texts(data_dir)
    common = dict(module=lm.layout.mlp_out, corpus=corpus_hash, tokens=n_tokens, window=window,
                  dtype=str(lm.dtype), autocast_bf16=autocast_bf16)
    paths = {layer: cache_path("stats", compute_key(lm, second_moments, layer=layer, **common),
                               ".safetensors")
             for layer in layers}
    result = {layer: m for layer, path in paths.items() if (m := _load(path)) is not None}
    if len(result) == len(paths):
        return result
    with file_lock(cache_path("stats", compute_key(lm, second_moments, **common), ".pass")):
        missing = [layer for layer in paths if layer not in result]
        result.update({layer: m for layer in missing if (m := _load(paths[layer])) is not None})
        still = [layer for layer in missing if layer not in result]
        if still:  # one pass for every layer still missing (another worker may have done some)
            rows = _windows(lm, texts, n_tokens, window)
            computed = _compute(lm, still, rows, batch_rows, autocast_bf16, progress)
            for layer, moment in computed.items():
                atomic_write(paths[layer], lambda tmp, m=moment: save_file(
                    {"moment": m.contiguous()}, str(tmp)))
                result[layer] = moment
    return {layer: result[layer] for layer in layers}


def _load(path: Path) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        moment = load_file(str(path))["moment"]
    except Exception:  # truncated or corrupted: recompute, never trust
        path.unlink(missing_ok=True)
        return None
    return moment if torch.isfinite(moment).all() else None


@torch.no_grad()
def _compute(lm: LoadedModel, layers: Sequence[int], rows: torch.Tensor, batch_rows: int,
             autocast_bf16: bool, progress: Callable[[int, int], None] | None,
             ) -> dict[int, torch.Tensor]:
    from editgate.editors.base import StopForward, capture_mlp_io, stop_after

    deepest = max(layers)
    device = lm.device
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for first in range(0, len(rows), batch_rows):
        ids = rows[first:first + batch_rows].to(device)
        with (torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16),
              capture_mlp_io(lm, layers) as records):
            try:
                with stop_after(lm, deepest):
                    lm.model(input_ids=ids)
            except StopForward:
                pass
        for layer in layers:
            keys = records[layer]["input"]
            keys = keys.reshape(-1, keys.shape[-1])
            if layer not in sums:
                sums[layer] = torch.zeros(keys.shape[1], keys.shape[1], device=device)
            # bf16 keys (autocast): a bf16 product per batch of ~2k tokens, summed in float32.
            # Its rounding (2⁻⁹ of one batch's sum, unbiased) averages out over the batches.
            sums[layer] += keys.T @ keys if keys.dtype == torch.bfloat16 else keys.float().T @ keys.float()
        count += ids.numel()
        if progress is not None:
            progress(count, rows.numel())
    return {layer: (total.double() / count).cpu() for layer, total in sums.items()}

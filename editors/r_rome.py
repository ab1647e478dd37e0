r"""R-ROME — ROME with a consistent key (Gupta et al., 2024, arXiv 2403.07175).

ROME's update ΔW = (v* − W k) uᵀ / (uᵀ k), u = C⁻¹ k*, builds u from the key k* averaged over
prefixed prompts but evaluates ``k`` at the plain prompt. The two differ, so W k* ≠ v* after the
edit and the update is larger than it needs to be; under sequential edits these oversized updates
accumulate until the model collapses (perplexity explodes, every prompt answers the same).
R-ROME uses k = k* in both places: the edited layer then maps k* to exactly v*, and sequential
editing stays stable for thousands of edits.

Everything else — key, value optimisation, covariance — is ROME's (:mod:`editgate.editors.rome`,
``hparams/rome.toml``, then ``hparams/r_rome.toml`` for anything R-ROME-specific).
"""

from __future__ import annotations

from dataclasses import dataclass

from editgate.editors.rome import ROME, ROMEHParams


@dataclass(frozen=True)
class RROMEHParams(ROMEHParams):
    consistent_key: bool = True


class RROME(ROME):
    name = "r-rome"
    HParams = RROMEHParams
    hparams_files = ("rome", "r_rome")

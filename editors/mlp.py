"""Names of a transformer block's MLP projections, for editors that touch more than the output one.

:class:`editgate.models.MLPLayout` names the output projection (the "value" matrix ROME-style
editors edit). KN reads its neurons at the *input* projection (EasyEdit's ``input_ff_attr``) and
MEND edits every projection of the MLP; both derive those names from the output projection's.
"""

from __future__ import annotations

from editgate.errors import ConfigError
from editgate.models import LoadedModel

# Output projection → (the projection whose output is a neuron's pre-activation, all projections).
_MLP_SIBLINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlp.down_proj": ("mlp.gate_proj", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
    "mlp.c_proj": ("mlp.c_fc", ("mlp.c_proj", "mlp.c_fc")),
    "mlp.fc_out": ("mlp.fc_in", ("mlp.fc_out", "mlp.fc_in")),
    "mlp.dense_4h_to_h": ("mlp.dense_h_to_4h", ("mlp.dense_4h_to_h", "mlp.dense_h_to_4h")),
}


def _split(lm: LoadedModel, layer: int) -> tuple[str, tuple[str, tuple[str, ...]]]:
    out = lm.layout.out_proj_name(layer)
    for suffix, siblings in _MLP_SIBLINGS.items():
        if out.endswith(suffix):
            return out[: -len(suffix)], siblings
    raise ConfigError(f"{lm.name}: no known MLP input projection next to {out!r}")


def in_proj_name(lm: LoadedModel, layer: int) -> str:
    """The module whose output is the MLP's pre-activation (gate_proj on gated MLPs, c_fc on GPT-2)."""
    prefix, (first, _) = _split(lm, layer)
    return prefix + first


def mlp_weight_names(lm: LoadedModel, layer: int) -> list[str]:
    """Every MLP projection weight of ``layer``, in the order EasyEdit's MEND configs list them."""
    prefix, (_, projections) = _split(lm, layer)
    return [f"{prefix}{name}.weight" for name in projections]

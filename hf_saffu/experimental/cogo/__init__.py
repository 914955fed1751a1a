"""CoGO: composed global optimizers for modular addition (docs/DESIGN.md section 7).

A two-layer network with quadratic activation, o = W_c (W_a e_{g1} + W_b e_{g2})^{∘2}, trained
with the centred L2 loss on all pairs of Z_d. In the Fourier basis its loss depends on the
weights only through monomial potentials that are ring homomorphisms of a semi-ring of
networks (sum = concatenate nodes, product = pair nodes), so global optimizers can be composed
in closed form from partial solutions (`constructions`) and compared with what gradient
descent finds (`analysis`).

An opt-in subpackage: importing `hf_saffu.experimental.cogo` registers "cogo" with `AutoConfig` and `AutoModel`;
`import hf_saffu` does not import it.
"""

from transformers import AutoConfig, AutoModel

from .configuration_cogo import CoGOConfig
from .constructions import CONSTRUCTION_KINDS, construct, expected_num_nodes
from .fourier import FourierWeights, MonomialPotentials, monomial_potentials, potential_loss, to_fourier, to_weights
from .modeling_cogo import CoGOForModularAddition, CoGOOutput, CoGOPreTrainedModel
from .network import accuracy, centred_l2_loss, network_outputs
from .task import all_pairs, split_pairs

AutoConfig.register(CoGOConfig.model_type, CoGOConfig, exist_ok=True)
AutoModel.register(CoGOConfig, CoGOForModularAddition, exist_ok=True)

__all__ = [
    "CONSTRUCTION_KINDS",
    "CoGOConfig",
    "CoGOForModularAddition",
    "CoGOOutput",
    "CoGOPreTrainedModel",
    "FourierWeights",
    "MonomialPotentials",
    "accuracy",
    "all_pairs",
    "centred_l2_loss",
    "construct",
    "expected_num_nodes",
    "monomial_potentials",
    "network_outputs",
    "potential_loss",
    "split_pairs",
    "to_fourier",
    "to_weights",
]

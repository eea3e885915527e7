"""PyTorch adapter: ``ELTAWrapper`` for any ``nn.Module``, and APDS self-training.

>>> from elta_core.adapters.torch import ELTAWrapper
>>> wrapper = ELTAWrapper(model, head="fc", num_pairs=4, flsa_weight=1.0)
>>> out = wrapper(images, labels)          # train mode: TFA + FLSA + task loss
>>> out.loss.backward()
"""

from elta_core.optional import require

require("torch", "torch")

from elta_core.adapters.torch.modules import to_distribution_head  # noqa: E402
from elta_core.adapters.torch.loop import fit  # noqa: E402
from elta_core.adapters.torch.prediction import predict  # noqa: E402
from elta_core.adapters.torch.pseudo_labelled import PseudoLabelledDataset  # noqa: E402
from elta_core.adapters.torch.self_training import SelfTraining  # noqa: E402
from elta_core.adapters.torch.wrapper import ELTAOutput, ELTAWrapper  # noqa: E402

__all__ = [
    "ELTAOutput",
    "ELTAWrapper",
    "PseudoLabelledDataset",
    "SelfTraining",
    "fit",
    "predict",
    "to_distribution_head",
]

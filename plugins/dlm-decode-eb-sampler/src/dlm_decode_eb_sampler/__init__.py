"""dlm-decode-eb-sampler: the EB-Sampler as a ``dlm_decode`` verification strategy named ``entropy_bound``.

EB-Sampler: Ben-Hamu et al., "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded Unmasking"
(arXiv 2505.24857, 2025). See :mod:`dlm_decode_eb_sampler.sampler` for the rule.

This module is the plugin: the package's ``pyproject.toml`` names it in the ``dlm_decode`` entry-point group,
and dlm_decode calls its :func:`dlm_register` hook once per discovery::

    [project.entry-points.dlm_decode]
    eb_sampler = "dlm_decode_eb_sampler"

Select it in a config with ``decoder.verification: {name: entropy_bound, gamma: 0.5}``.
"""

from __future__ import annotations

from dlm_decode.api import StrategyRegistry, hookimpl
from dlm_decode_eb_sampler.sampler import EntropyBound, EntropyBoundConfig, ErrorProxy, entropy_bounded_commit

__version__ = "0.1.0"

__all__ = ["EntropyBound", "EntropyBoundConfig", "ErrorProxy", "dlm_register", "entropy_bounded_commit"]


@hookimpl
def dlm_register(registry: StrategyRegistry) -> None:
    """Add ``entropy_bound`` to the verification role.

    :param registry: the registry being filled.
    """
    registry.add("verification", "entropy_bound", EntropyBoundConfig, lambda config, context: EntropyBound(config))

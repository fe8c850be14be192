"""Decoder configuration: structured schemas and their composition from YAML files and overrides."""

from dlm_decode.config.compose import ResolvedConfig, load_config
from dlm_decode.config.schema import Config, GenerationSection, ModelSection, ModelSpec

__all__ = ["Config", "GenerationSection", "ModelSection", "ModelSpec", "ResolvedConfig", "load_config"]

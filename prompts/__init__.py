"""Prompt sets and loaders: I2P (hub or CSV), local CSV / parquet / text files, and shipped sets."""

from prompts.load import Prompt, PromptSet, builtin_sets, load_prompts, read_prompts
from prompts.select import derived_seed, stratified_sample

__all__ = ["Prompt", "PromptSet", "builtin_sets", "derived_seed", "load_prompts", "read_prompts", "stratified_sample"]

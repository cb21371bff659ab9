"""Neural model components: motion tokenizer (RVQ-VAE), motion connector, LLM wrappers.

Import the submodules directly (for example ``a2llm_ros.model.motion_tokenizer``);
this package file stays free of imports so that importing one component does not
pull in the others.
"""

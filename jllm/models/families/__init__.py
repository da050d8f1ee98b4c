"""Each supported family as a description: what its ``config.json`` means for ``ModelArgs``, and its tensor names.

A family reader takes the checkpoint's config dict and returns the ``ModelArgs`` (``jllm.models.model_args``) the
one decoder (``jllm.models.decoder``) runs; options the decoder does not implement are refused by the reader, at load,
by name. The readers are grouped by the decoders they describe (``llama``, ``gemma``, ``layer_norm``, ``relu_mlp``,
``mixtures``, ``gpt_oss``, ``gpt_variants``, ``alibi``, ``fairseq``, ``dbrx``; ``multimodal`` reads an image-text
checkpoint's language model through them), over the settings they all read alike (``common``);
``jllm.models.registry`` maps architectures to them.

Where this package sits: docs/architecture.md.
"""

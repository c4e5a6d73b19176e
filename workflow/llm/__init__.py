"""The LLM engine every fine-tuning method runs on.

- `workflow.llm.model`: base model conversion (GGUF -> safetensors folder), device/dtype policy,
  `load_model`.
- `workflow.llm.prompts`: pure prompt builders (candidate and open prompts), title token budget,
  chat-template rendering, answer tokens.
- `workflow.llm.scoring`: log pi(y|x) of many candidate answers per prompt with the prompt encoded
  once (packed sequence, block attention mask, LM head only at answer positions).

Submodules import torch/transformers lazily on purpose: `import workflow.llm` stays cheap.
"""

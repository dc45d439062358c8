"""Scale-out machinery: several processes (``distributed``), sharded parameters and mixed
precision (``trained_model``), checkpoints (``checkpoint``) and the optional vLLM sampler
(``vllm_engine``). The algorithm does not depend on any of it."""

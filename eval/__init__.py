"""rgd_eval: the personalized-alignment study around the rgd-engine.

Everything here is model-free (data, preference pairs, reward-head training on given features, metrics,
prompts, report); `rgd_eval.pipeline` composes it with the engine.
"""

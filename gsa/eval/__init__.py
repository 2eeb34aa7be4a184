"""Real-model evaluation of GSA: assets (models and text from package registries),
a decode harness that runs a Hugging Face model with GSA in its decode path,
accuracy metrics, hash-weight training and the real-model demo.

Heavy dependencies (transformers, gguf, accelerate, rdata) are imported lazily,
inside the functions that need them, so ``import gsa.eval`` stays cheap.
"""

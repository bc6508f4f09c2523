"""rgd-serve: an OpenAI-compatible server over the engine with per-user reward heads, continuous batching and live
head updates. batch.py (lanes over the decoder's step classes), scheduler.py (the worker thread), protocol.py
(OpenAI bodies), head_store.py (snapshots, updates, saves), app.py (HTTP), metrics.py, cli.py (`rgd-serve`)."""

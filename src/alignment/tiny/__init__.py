"""The embedded default: a tiny model, a tokenizer trained here, and a synthetic task it can learn on a CPU."""

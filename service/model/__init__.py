"""The reward-model contract: formatting, encoding, the model, and the checkpoint layout."""

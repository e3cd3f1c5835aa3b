"""The synthetic scene world with exact masks, and the training of the embedded models."""

"""MNIST digit classification with a small CNN."""

"""In-house PyTorch reference definitions, used only by tests and benchmarks."""

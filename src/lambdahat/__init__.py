"""lambdahat: estimate the local learning coefficient (LLC) of trained PyTorch models."""

__all__: list[str] = []

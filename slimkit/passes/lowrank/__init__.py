"""Low-rank factorization of Linear and Conv2d layers by truncated SVD."""

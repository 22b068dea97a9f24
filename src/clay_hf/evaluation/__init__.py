"""Evaluating Clay: masked reconstruction error (`reconstruction`), reconstruction figures (`visualize`) and the linear
probe (`probe`)."""

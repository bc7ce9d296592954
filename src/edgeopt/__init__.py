"""edgeopt: make a trained image classifier fit a small CPU device, and prove by measurement
which version to ship."""

__version__ = "0.1.0"

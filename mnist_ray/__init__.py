"""mnist_ray: distributed MNIST digit classification on Ray (Train, Tune, Data)."""

__version__ = "0.1.0"

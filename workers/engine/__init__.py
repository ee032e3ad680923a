"""The numerical engine: pure torch/numpy/scipy. Import submodules directly."""

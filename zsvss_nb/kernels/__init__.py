"""Plain-PyTorch kernels the stages share: attention hooks, token ops, frame geometry,
resampling."""

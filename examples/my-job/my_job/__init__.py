"""An example job package, installed into the singleton image by examples/my-job/Containerfile."""
